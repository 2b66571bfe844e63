"""Ray Serve: ``deployments`` (``EncoderDeployment``, ``HeadDeployment``, ``IngressDeployment``) and
``app`` (``build_app``, the typed app builder). The Ray-free pieces they wrap live in
:mod:`mtl_ray.serving`."""

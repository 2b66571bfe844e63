"""What the Predictor and the Serve gateway share: which tasks a request asks for (``selection``)."""

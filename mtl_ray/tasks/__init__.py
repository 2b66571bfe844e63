"""Task types, registered by name. Adding one = a module that calls ``register_task_type`` + an import here."""

from mtl_ray.tasks import classification, contrastive, mlm, regression  # noqa: F401  (registers the types)
from mtl_ray.tasks.base import TASK_TYPES, TaskSpec, TaskType, get_task_type, register_task_type

__all__ = ["TASK_TYPES", "TaskSpec", "TaskType", "get_task_type", "register_task_type"]

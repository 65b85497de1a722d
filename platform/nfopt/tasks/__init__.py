"""Inner tasks: specs read from top-level ``tasks/*.yaml``, task families, held-out suites and
batched populations of inner networks."""

from nfopt.tasks.family import Task, TaskFamily, TaskMixture, TaskSampler, build_model, load_suite_tasks, load_tasks
from nfopt.tasks.population import Population
from nfopt.tasks.spec import (
    SuiteSpec,
    TaskFamilySpec,
    TaskMixtureSpec,
    TaskSpecError,
    load_suite,
    load_task_family,
    tasks_dir,
)

__all__ = [
    "Population",
    "SuiteSpec",
    "Task",
    "TaskFamily",
    "TaskFamilySpec",
    "TaskMixture",
    "TaskMixtureSpec",
    "TaskSampler",
    "TaskSpecError",
    "build_model",
    "load_suite",
    "load_suite_tasks",
    "load_task_family",
    "load_tasks",
    "tasks_dir",
]

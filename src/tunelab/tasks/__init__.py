"""Tasks as data: one YAML file per task says where its data lives, how a record becomes an instruction
and a target, and which metric scores it.

The built-in tasks (this folder) cover every dataset in ../shared/data. A task file is also accepted by path,
so a user adds a task without writing code. `source` is a folder under the data root (``$TUNELAB_DATA``,
by default the ``shared/data`` folder beside the checkout or the working directory), a file or folder
path, or ``hf:NAME[:CONFIG]`` for a Hugging Face dataset (e.g. ``hf:squad``, whose ``answers`` are
``{"text": [...]}``; ``hf:cnn_dailymail:3.0.0`` with ``reference_field: highlights``); hub datasets need network
access. Reading a task's records is `tunelab.data.task_records`.
"""

from tunelab.tasks.inline import data_task_name, inline_task
from tunelab.tasks.registry import (
    SUITES_DIR,
    TASKS_DIR,
    builtin_suites,
    builtin_tasks,
    data_root,
    find_yaml,
    load_task,
    read_yaml,
)
from tunelab.tasks.spec import TaskError, TaskSpec, split_slice
from tunelab.tasks.suite import Suite, SuiteEntry, load_suite

__all__ = [
    "SUITES_DIR",
    "TASKS_DIR",
    "Suite",
    "SuiteEntry",
    "TaskError",
    "TaskSpec",
    "builtin_suites",
    "builtin_tasks",
    "data_root",
    "data_task_name",
    "find_yaml",
    "inline_task",
    "load_suite",
    "load_task",
    "read_yaml",
    "split_slice",
]

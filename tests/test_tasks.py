"""The task registry's one JSON-schema validator per task, shared by prepare, the checks and feedback."""
from __future__ import annotations

import fastjsonschema
import pytest

from smm.eval.checks import FAIL, check_schema
from smm.feedback.mapping import Mapper
from smm.tasks import TASKS, fast_validator, schema_errors, schema_validator


@pytest.mark.parametrize("name", list(TASKS))
def test_one_validator_per_task_for_every_reader(name):
    task = TASKS[name]
    assert schema_validator(name) is schema_validator(name) and fast_validator(name) is fast_validator(name)
    assert Mapper()._validators[name] is fast_validator(name)
    fast_validator(name)(task.example)
    assert schema_errors(task, task.example) == [] and list(schema_validator(name).iter_errors(task.example)) == []
    broken = {**task.example, "unexpected_key": 1}
    with pytest.raises(fastjsonschema.JsonSchemaException):
        fast_validator(name)(broken)
    assert schema_errors(task, broken) and check_schema(task, None, broken).status == FAIL

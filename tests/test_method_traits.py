"""A method's facts are one row of METHOD_TRAITS: the registry of method modules must agree with it, and a method
registered from outside tunelab (here a toy one, defined in this file) is valid config with its row's defaults."""

from __future__ import annotations

import types

import pytest

from tunelab.cli import COMPARE_METHODS, build_parser
from tunelab.config import METHOD_TRAITS, ConfigError, LearningRates, MethodTraits, build_config
from tunelab.methods import METHODS, MethodError, base, check_registry, register_method
from tunelab.resolve import check_config
from tunelab.train.objectives import objective_of

GENERATION = {"data": {"kind": "generation", "prompt_field": "prompt"}}


def _toy_module() -> types.ModuleType:
    """A method that changes nothing: enough of a module for the registry; nothing here trains with it."""
    toy = types.ModuleType("toy_method")
    toy.check = lambda config: None
    toy.apply = lambda model, config: model
    toy.save = lambda model, directory: None
    toy.load = lambda base_model, directory: base_model
    toy.merge = lambda model: model
    return toy


TOY = MethodTraits(LearningRates(with_head=7e-3, generative=7e-4))


@pytest.fixture
def toy_registered():
    register_method("toy", _toy_module(), TOY)
    yield
    del METHODS["toy"], METHOD_TRAITS["toy"]


def test_every_method_module_has_a_row_and_every_row_a_module():
    assert METHODS.keys() == METHOD_TRAITS.keys()
    check_registry(METHODS, METHOD_TRAITS)


def test_a_module_without_a_row_fails_the_check_naming_it():
    with pytest.raises(MethodError, match=r"method module\(s\) toy have no row in tunelab.config.METHOD_TRAITS"):
        check_registry({**METHODS, "toy": _toy_module()}, METHOD_TRAITS)


def test_a_row_without_a_module_fails_the_check_naming_it():
    with pytest.raises(MethodError, match=r"row\(s\) toy without a module in tunelab.methods.METHODS"):
        check_registry(METHODS, {**METHOD_TRAITS, "toy": TOY})


def test_a_row_reading_a_settings_section_config_lacks_fails_the_check():
    traits = MethodTraits(TOY.learning_rates, settings=("toy",))
    with pytest.raises(MethodError, match="method 'toy' reads settings section\\(s\\) toy, which MethodConfig"):
        check_registry({**METHODS, "toy": _toy_module()}, {**METHOD_TRAITS, "toy": traits})


def test_an_unregistered_method_name_is_refused_with_a_did_you_mean():
    with pytest.raises(
        ConfigError, match="method.name: Input should be 'full', 'head'.* or 'ia3' .*Did you mean 'lora'"
    ):
        build_config({"method": {"name": "toy-lora"}})


def test_a_registered_method_is_valid_config_and_takes_its_rows_learning_rates(toy_registered):
    def learning_rate(settings: dict) -> float:
        config = build_config(settings)
        return objective_of(config).learning_rate(config)

    assert learning_rate({"method": {"name": "toy"}}) == 7e-3
    assert learning_rate({"method": {"name": "toy"}, **GENERATION}) == 7e-4
    assert learning_rate({"method": {"name": "toy"}, "training": {"learning_rate": 1e-5}}) == 1e-5


def test_a_method_registers_once_and_only_as_a_whole_module(toy_registered):
    with pytest.raises(MethodError, match="method 'toy' is already registered"):
        register_method("toy", _toy_module(), TOY)
    half = _toy_module()
    del half.merge
    with pytest.raises(MethodError, match="lacks merge"):
        register_method("toy2", half, TOY)
    assert "toy2" not in METHODS and "toy2" not in METHOD_TRAITS


def test_a_row_confined_to_some_task_types_refuses_the_others_saying_why(toy_registered):
    traits = MethodTraits(TOY.learning_rates, kinds=frozenset({"generation"}), kinds_reason="toy reasons")
    register_method("toy-decoder", _toy_module(), traits)
    try:
        assert build_config({"method": {"name": "toy-decoder"}, **GENERATION}).method.name == "toy-decoder"
        with pytest.raises(ConfigError, match=r"defined only for data.kind generation, not 'classification' \(toy"):
            build_config({"method": {"name": "toy-decoder"}})
    finally:
        del METHODS["toy-decoder"], METHOD_TRAITS["toy-decoder"]


def test_method_lists_in_help_and_messages_come_from_the_table():
    """The lists as they read before the table, where the table says the same."""
    assert COMPARE_METHODS == "full,head,bitfit,lora,adapter,prefix,prompt,ia3"
    commands = build_parser()._subparsers._group_actions[0]._choices_actions  # the listing `tunelab --help` prints
    merge_help = next(command.help for command in commands if command.dest == "merge")
    assert merge_help.endswith("folded in (full, head, bitfit, lora, dora, rslora, qlora, ia3)")
    with pytest.raises(MethodError, match="train with full, head, bitfit, lora, dora, rslora, qlora or ia3 when"):
        base.cannot_merge("adapter", "its adapters are extra sublayers")


def test_the_lora_family_and_prompt_learning_rules_read_the_table():
    lora_family = [name for name, traits in METHOD_TRAITS.items() if traits.lora_family]
    assert lora_family == ["lora", "dora", "rslora", "qlora"]
    assert [name for name, traits in METHOD_TRAITS.items() if traits.prompt_learning] == ["prefix", "prompt"]
    mixture = {"tasks": [{"task": "sst2", "loss_weight": 2.0}]}
    with pytest.raises(ConfigError, match="method 'prefix' trains through the model's own loss"):
        build_config({"method": {"name": "prefix"}, "mixture": mixture})
    adapters = {"model": {"name": "smollm2-135m-instruct"}, "objective": "task_adapters"}
    for name in ("dora", "rslora"):
        check_config(build_config({**adapters, "method": {"name": name}, "mixture": {"tasks": [{"task": "sst2"}]}}))
    with pytest.raises(ConfigError, match="'task_adapters' trains one LoRA adapter per task"):
        check_config(build_config({**adapters, "method": {"name": "qlora"}, "mixture": {"tasks": [{"task": "sst2"}]}}))

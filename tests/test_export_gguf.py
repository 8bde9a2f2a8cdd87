"""`tunelab export --format gguf` with the real registry decoders: the file read back by transformers' GGUF
loader (weights, logits, greedy answers, tokenizer) and by the `gguf` package's reader, and the Modelfile's
template rendered by Go's text/template against the tokenizer's chat template."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.config import build_config, load_config
from tunelab.export.base import ExportError
from tunelab.export.gguf import export as export_gguf
from tunelab.export.modelfile import PROBES
from tunelab.pipeline import train
from tunelab.run_commands import merged_model
from tunelab.runs import RunDir, RunError
from tunelab.train.trained import load_run

from helpers import SHARED_DATA, session_home
from serving import CONFIGS, short_lora_run

real = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
)
"""With pytest.mark.integration: the tests that train real models on ../shared/data."""
GO = Path(sys.executable).parent / "go"
PROMPTS = ["What is the capital of France?", "Name three colours.", "Say hello in French.", "What do bees make?"]


def tiny_run(folder: Path, config: str, name: str, *overrides: str):
    """A 2-step run on 4 DialogSum records with short texts: enough to change every tuned weight."""
    dialogsum = SHARED_DATA / "dialogsum"
    return train(
        load_config(
            CONFIGS / config,
            [
                f"name={name}",
                f"output_dir={folder}",
                f"data.train={dialogsum / 'validation.jsonl'}",
                f"data.test={dialogsum / 'test.jsonl'}",
                "data.max_train_examples=4",
                "data.max_eval_examples=1",
                "data.max_length=64",
                "data.max_target_length=16",
                "training.max_steps=2",
                "training.batch_size=2",
                "training.precision=fp32",
                "training.learning_rate=1e-2",
                "eval.baselines=[]",
                "eval.max_new_tokens=4",
                *overrides,
            ],
        )
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return short_lora_run(tmp_path_factory.mktemp("gguf-runs"), SHARED_DATA / "dialogsum", 1, "chat")


@pytest.fixture(scope="module")
def merged(lora_run):
    loaded = load_run(lora_run)
    return merged_model(loaded).eval(), loaded.tokenizer


@pytest.fixture(scope="module")
def exports(lora_run, tmp_path_factory):
    """quant -> the folder `tunelab export` wrote: f16 through the CLI as a user runs it, the others in-process."""
    folders = {quant: tmp_path_factory.mktemp("gguf-export") / quant for quant in ("f16", "q8_0", "q4_0", "bf16")}
    subprocess.run(
        [sys.executable, "-m", "tunelab", "export", str(lora_run.path), "--format", "gguf", "--output", str(folders["f16"])],
        check=True,
        env={**os.environ, "TUNELAB_HOME": str(session_home(tmp_path_factory))},
    )  # fmt: skip
    for quant in ("q8_0", "q4_0", "bf16"):
        export_gguf(lora_run, folders[quant], quant=quant)
    return folders


def gguf_file(folder: Path) -> Path:
    (found,) = folder.glob("*.gguf")
    return found


def load_back(folder: Path):
    path = gguf_file(folder)
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def greedy(model, tokenizer, prompt: str, tokens: int = 16) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1] :].tolist()


@pytest.mark.integration
@real
def test_f16_export_reads_back_in_transformers_with_the_merged_weights_and_answers(exports, merged):
    model, tokenizer = merged
    back = load_back(exports["f16"])
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    got = back.state_dict()
    for name, weight in expected.items():
        # f16 storage is the only change: every weight equals the merged one rounded to f16, which also
        # proves the names and llama.cpp's query/key permutation round-trip.
        assert torch.equal(got[name], weight.half().float()), name
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        difference = (model(**ids).logits - back(**ids).logits).abs().max().item()
    assert difference < 0.1  # logits span about ±40; f16 weights move them by a few hundredths
    assert [greedy(back, tokenizer, p) for p in PROMPTS] == [greedy(model, tokenizer, p) for p in PROMPTS]


@pytest.mark.integration
@real
def test_q8_0_export_gives_the_same_greedy_answers_on_most_prompts(exports, merged):
    model, tokenizer = merged
    back = load_back(exports["q8_0"])
    same = [greedy(back, tokenizer, p) == greedy(model, tokenizer, p) for p in PROMPTS]
    print(f"q8_0: {sum(same)} of {len(same)} greedy answers equal to the merged model's")
    assert sum(same) > len(same) / 2


@pytest.mark.integration
@real
@pytest.mark.parametrize(
    "quant, weight_type, file_type", [("q4_0", "Q4_0", "MOSTLY_Q4_0"), ("bf16", "BF16", "MOSTLY_BF16")]
)
def test_other_quantisations_store_their_type_and_load(exports, quant, weight_type, file_type, merged):
    reader = gguf.GGUFReader(gguf_file(exports[quant]))
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType[file_type]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == weight_type and types["output_norm.weight"] == "F32"
    model, tokenizer = merged
    back = load_back(exports[quant])
    ids = tokenizer(PROMPTS[:1], return_tensors="pt")
    with torch.inference_mode():
        tuned, read = model(**ids).logits[0, -1], back(**ids).logits[0, -1]
    assert torch.isfinite(read).all() and tuned.argmax() == read.argmax()


@pytest.mark.integration
@real
def test_the_gguf_carries_the_tokenizer_special_tokens_and_chat_template(exports, merged):
    _, tokenizer = merged
    path = gguf_file(exports["f16"])
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.ggml.") and not key.endswith(("tokens", "merges", "token_type"))}  # fmt: skip
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert reader.fields["llama.block_count"].contents() == 30
    read = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    conversation = [{"role": "user", "content": "Summarise: the meeting moved to Friday, 10 a.m. — bring notes!"}]
    assert read.apply_chat_template(conversation, tokenize=False) == tokenizer.apply_chat_template(
        conversation, tokenize=False
    )
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert read(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def render_go(template: str, cases: list[dict]) -> list[str]:
    request = json.dumps({"template": template, "cases": cases})
    done = subprocess.run(
        [str(GO), "run", str(Path(__file__).parent / "ollama" / "render.go")],
        input=request, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout)


def modelfile_fields(folder: Path) -> tuple[str, str | None, list[str], str]:
    text = (folder / "Modelfile").read_text(encoding="utf-8")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else None
    stops = [json.loads(line.split(" ", 2)[2]) for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    return template, system, stops, text.splitlines()[0]


@pytest.mark.integration
@real
def test_the_modelfile_template_renders_each_conversation_as_the_chat_template_does(exports, merged):
    _, tokenizer = merged
    template, system, stops, first_line = modelfile_fields(exports["f16"])
    assert first_line == f"FROM ./{gguf_file(exports['f16']).name}"
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert tokenizer.eos_token in stops
    conversations = [*PROBES, [{"role": "user", "content": 'Quotes " and {{ braces }} and\nnewlines'}]]
    # Ollama prepends the Modelfile's SYSTEM as a system message when a conversation has none.
    cases = [{"Messages": ([] if c[0]["role"] == "system" else [{"Role": "system", "Content": system}]) + [{"Role": m["role"], "Content": m["content"]} for m in c]} for c in conversations]  # fmt: skip
    expected = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
        for c in conversations
    ]
    assert render_go(template, cases) == expected


@pytest.mark.integration
@real
def test_a_base_model_template_is_its_prompt_template_then_a_newline(tmp_path):
    run = tiny_run(
        tmp_path / "runs", "instruct-gemma3-dialogsum.yaml", "gemma", "method.lora.target_modules=[q_proj,v_proj]"
    )
    folder = export_gguf(run, tmp_path / "out", quant="f16")
    template, system, stops, _ = modelfile_fields(folder)
    assert system is None and "<eos>" in stops
    config = run.config()
    (rendered,) = render_go(template, [{"Prompt": "#Person1#: Hi.\n#Person2#: Hello."}])
    assert rendered == config.data.prompt_template.format(dialogue="#Person1#: Hi.\n#Person2#: Hello.") + "\n"
    back = load_back(folder)
    loaded = load_run(run)
    model, tokenizer = merged_model(loaded).eval(), loaded.tokenizer
    got = back.state_dict()
    for name, weight in model.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(got[name], weight.half().float()), name  # Gemma's 1 + w norms round-trip
    ids = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        tokens = [m.generate(**ids, max_new_tokens=8, do_sample=False).tolist() for m in (model, back)]
    assert tokens[0] == tokens[1]


@pytest.mark.integration
@real
@pytest.mark.parametrize("method", ["full", "dora", "rslora", "ia3"])
def test_every_merging_method_exports_its_merged_weights(tmp_path, method, base_weights):
    run = tiny_run(tmp_path / "runs", "dialogsum-smollm2-lora.yaml", method, f"method.name={method}")
    folder = export_gguf(run, tmp_path / "out", quant="f16")
    reader = gguf.GGUFReader(gguf_file(folder))
    stored = {t.name: t for t in reader.tensors}
    model = merged_model(load_run(run))
    changed = 0
    for name, weight in model.state_dict().items():
        if not name.endswith(("v_proj.weight", "down_proj.weight")):  # unpermuted, and tuned by every method
            continue
        gguf_name = (
            name.replace("model.layers.", "blk.")
            .replace(".self_attn.v_proj", ".attn_v")
            .replace(".mlp.down_proj", ".ffn_down")
        )
        tensor = stored[gguf_name]
        read = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
        assert torch.equal(read, weight.half().float()), name
        changed += not torch.equal(weight, base_weights[name])
    assert changed > 0  # the export holds the tuned weights, not the base's


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    """smollm2's untuned weights, to tell a tuned export from the base."""
    from tunelab.models.loading import prepare

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(session_home(tmp_path_factory)))
        return AutoModelForCausalLM.from_pretrained(prepare("smollm2-135m-instruct"), dtype=torch.float32).state_dict()


@pytest.mark.integration
@real
def test_taken_folders_are_refused_and_an_interrupted_export_leaves_nothing(lora_run, tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        export_gguf(lora_run, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    monkeypatch.setattr(
        gguf.GGUFWriter, "write_tensors_to_file", lambda self, **_: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        export_gguf(lora_run, tmp_path / "killed")
    assert not (tmp_path / "killed").exists()


def tiny_run_of(task_type: str, model_dir: str, data_file: Path, out: Path):
    data = {"train": str(data_file), "max_length": 32, "max_target_length": 8}
    if task_type != "classification":
        data.update(prompt_template="{question}", response_field="answer")
    config = build_config(
        {
            "name": f"tiny-{task_type}",
            "task_type": task_type,
            "output_dir": str(out),
            "model": {"name": model_dir},
            "data": data,
            "method": {"name": "lora"},
            "training": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
            "eval": {"max_new_tokens": 2, "baselines": []},
        }
    )
    return train(config)


def test_a_classifier_run_is_pointed_to_onnx(tiny_encoder, sentiment_file, tmp_path):
    run = tiny_run_of("classification", tiny_encoder, sentiment_file, tmp_path / "runs")
    with pytest.raises(ExportError, match="--format onnx"):
        export_gguf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_base_outside_the_registry_is_pointed_to_llama_cpps_converter(tiny_decoder, copy_task_file, tmp_path):
    run = tiny_run_of("causal_lm", tiny_decoder, copy_task_file, tmp_path / "runs")
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        export_gguf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_k_quant_without_llama_quantize_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize on it
    with pytest.raises(ExportError, match=r"llama-quantize.*not on PATH.*--quant f16.*Q4_K_M"):
        export_gguf(RunDir(tmp_path / "any-run"), tmp_path / "out", quant="q4_k_m")
    assert not (tmp_path / "out").exists()


def chat_run_of(folder: Path, model: str, **data):
    """A 1-step LoRA chat run (data.kind: chat) of a registry decoder on 4 conversations of ../shared/data/chat."""
    chat = SHARED_DATA / "chat"
    method = {"name": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]}}
    data = {"kind": "chat", "train": str(chat / "validation.jsonl"), "test": str(chat / "test.jsonl"), **data}
    limits = {"max_train_examples": 4, "max_eval_examples": 1, "max_length": 128}
    training = {"max_steps": 1, "batch_size": 2, "precision": "fp32"}
    return train(
        build_config(
            {
                "name": f"chat-{model}",
                "output_dir": str(folder),
                "model": {"name": model},
                "data": {**data, **limits},
                "method": method,
                "training": training,
                "eval": {"baselines": [], "max_new_tokens": 4},
            }
        )
    )


@pytest.mark.integration
@real
@pytest.mark.parametrize("model, data", [("smollm2-135m-instruct", {}), ("gemma3-270m", {"chat_template": "gemma"})])
def test_a_chat_runs_gguf_and_modelfile_keep_its_template_and_stop_at_its_closing_token(tmp_path, model, data):
    """smollm2 keeps its own ChatML template; the base gemma3 was given tunelab's gemma template by
    data.chat_template, and <end_of_turn> (not the source GGUF's <eos>) is the EOS it must stop at."""
    from tunelab.kinds.chat_masks import closing_text

    run = chat_run_of(tmp_path / "runs", model, **data)
    folder = export_gguf(run, tmp_path / "out", quant="f16")
    tokenizer = load_run(run).tokenizer
    closing = closing_text(tokenizer)
    assert closing == {"smollm2-135m-instruct": "<|im_end|>", "gemma3-270m": "<end_of_turn>"}[model]
    reader = gguf.GGUFReader(gguf_file(folder))
    assert reader.fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    eos = reader.fields["tokenizer.ggml.eos_token_id"].contents()
    assert reader.fields["tokenizer.ggml.tokens"].contents()[eos] == closing
    template, system, stops, _ = modelfile_fields(folder)
    assert closing in stops
    cases = [{"Messages": ([] if c[0]["role"] == "system" or system is None else [{"Role": "system", "Content": system}]) + [{"Role": m["role"], "Content": m["content"]} for m in c]} for c in PROBES]  # fmt: skip
    expected = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
        for c in PROBES
    ]
    assert render_go(template, cases) == expected

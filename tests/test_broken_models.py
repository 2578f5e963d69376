"""Broken checkpoints and adapters (issue #21): each is a ModelLoadError naming the problem and the
fix, raised when the handle is made where the files alone tell, and exit code 2 on the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
from neuronlens import alignment, cli
from neuronlens.errors import ModelLoadError
from neuronlens.models._checks import check_model_finite, nonfinite
from neuronlens.models._peft import peft_wrap_quietly

DEMO_ADAPTER = Path(alignment.__file__).parent / "demo" / "adapter"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Exit code and stderr of `neuronlens ARGS`."""
    monkeypatch.setattr(sys, "argv", ["neuronlens", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0), " ".join(capsys.readouterr().err.split())


def audit_args(base: Path, ft: Path, out: Path) -> list[str]:
    return ["audit", "--base", str(base), "--ft", str(ft), "--layers", "1", "--probes", "finance",
            "--max-prompts", "2", "--out", str(out), "--no-progress"]


def copy_with(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint `src` whose model.safetensors tensors went through `edit(dict)`."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file(edit(tensors), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def without_layer(tensors: dict, layer: int = 2) -> dict:
    return {k: v for k, v in tensors.items() if f".layers.{layer}." not in k}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def adapter(tmp_path, tiny_base_dir) -> Path:
    """A LoRA adapter (random A and B) of the tiny base, naming it as its base."""
    from peft import LoraConfig, get_peft_model

    model = alignment.load_model(tiny_base_dir).model
    with peft_wrap_quietly():
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    out = tmp_path / "adapter"
    peft_model.save_pretrained(str(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tiny_base_dir)}))
    return out


# -- 1. incomplete checkpoints ---------------------------------------------------------------------


def test_a_checkpoint_missing_a_layer_is_refused_when_resolved(tmp_path, tiny_base_dir):
    ft = copy_with(tiny_base_dir, tmp_path / "ft", without_layer)
    with pytest.raises(ModelLoadError, match=r"is incomplete: 9 tensor\(s\)") as exc:
        alignment.load_model(ft)  # no weights loaded yet: the headers tell
    assert "model.layers.2.input_layernorm.weight" in exc.value.problem and "(9 in all)" in exc.value.problem
    assert "random values" in exc.value.problem and "download or copy all of its files again" in exc.value.fix


def test_the_load_report_refuses_missing_tensors_the_headers_cannot_judge(tmp_path, tiny_base_dir):
    """A tensor of another name beside the gap (a renamed or prefixed checkpoint may look so) makes
    the header check stand aside; transformers' own loading report still refuses the gap."""
    ft = copy_with(tiny_base_dir, tmp_path / "ft", lambda t: {**without_layer(t), "v_head.weight": torch.zeros(1, 64)})
    handle = alignment.load_model(ft)
    with pytest.raises(ModelLoadError, match=r"is incomplete: 9 tensor\(s\)"):
        handle.model  # noqa: B018


def test_extra_tensors_are_loaded_with_a_warning(tmp_path, tiny_base_dir):
    ft = copy_with(tiny_base_dir, tmp_path / "ft", lambda t: {**t, "v_head.weight": torch.zeros(1, 64)})
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) in the checkpoint are not part of the model.*v_head.weight"):
        alignment.load_model(ft).model  # noqa: B018


def test_tied_weights_are_not_missing(tmp_path, tok):
    """save_pretrained leaves out a head tied to the input embedding: not a missing tensor."""
    model = tiny.tiny_llama(tok)
    model.config.tie_word_embeddings = True
    tied = type(model)(model.config)
    folder = tiny.save(tied, tok, tmp_path / "tied")
    assert not any("lm_head" in k for k in load_file(folder / "model.safetensors"))
    loaded = alignment.load_model(folder).model
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    alignment.load_model(tiny.save(tiny.tiny_gpt2(tok), tok, tmp_path / "gpt2")).model  # noqa: B018 - GPT-2 ties too


def test_shapes_that_do_not_fit_the_config_are_named(tmp_path, tiny_base_dir):
    ft = copy_with(tiny_base_dir, tmp_path / "ft", lambda t: {**t, "model.layers.1.mlp.down_proj.weight": torch.zeros(64, 100)})
    with pytest.raises(ModelLoadError, match=r"model.layers.1.mlp.down_proj.weight \(64, 100\) vs \(64, 128\)") as exc:
        alignment.load_model(ft).model  # noqa: B018
    assert "config.json that was saved with these weights" in exc.value.fix


# -- 2. non-finite weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_is_refused_when_loaded(tmp_path, tiny_base_dir, value):
    def poison(t):
        t["model.layers.1.mlp.down_proj.weight"][3, 5] = value
        return t

    handle = alignment.load_model(copy_with(tiny_base_dir, tmp_path / "ft", poison))
    with pytest.raises(ModelLoadError, match=r"NaN or infinite values in 1 tensor\(s\): model.layers.1.mlp.down_proj.weight\.\n"):
        handle.model  # noqa: B018


def test_buffers_are_checked_and_large_finite_values_are_not_flagged(tok):
    model = tiny.tiny_llama(tok)
    with torch.no_grad():  # finite values at the top of float32 / float16: not flagged
        model.lm_head.weight.fill_(3e38)
    model.register_buffer("big_half", torch.full((8,), 60000.0, dtype=torch.float16))
    check_model_finite(model, "tiny")
    model.register_buffer("scale", torch.tensor([1.0, float("nan")]))
    with pytest.raises(ModelLoadError, match=r"1 tensor\(s\): scale\."):
        check_model_finite(model, "tiny")
    assert nonfinite([("i", torch.tensor([1, 2])), ("e", torch.empty(0)), ("b", torch.tensor([float("inf")], dtype=torch.bfloat16))]) == ["b"]


def test_an_adapter_with_a_nan_is_refused_when_resolved(tmp_path, adapter):
    tensors = load_file(adapter / "adapter_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"The adapter .* has NaN or infinite values in 1 tensor\(s\): {name}\."):
        alignment.load_model(adapter)


def test_the_demo_adapter_with_one_nan_is_refused_before_its_base_is_looked_up(tmp_path):
    """It printed FAIL 42% and 'No drift detected (+nan)'. Refused from the adapter's own file,
    so this needs no SmolLM2."""
    demo = shutil.copytree(DEMO_ADAPTER, tmp_path / "demo")
    tensors = load_file(demo / "adapter_model.safetensors")
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name].view(-1)[7] = float("nan")
    save_file(tensors, str(demo / "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"NaN or infinite values in 1 tensor\(s\): {name}\."):
        alignment.load_model(demo)


# -- adapters that do not fit their base or lack tensors ----------------------------------------------


def test_an_adapter_missing_tensors_its_config_declares_is_refused(adapter):
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layers.3." not in k}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"is incomplete: 4 of the 16 tensors its adapter_config.json declares") as exc:
        alignment.load_model(adapter)
    assert "layers.3.mlp.down_proj.lora_A.weight" in exc.value.problem and "save_pretrained" in exc.value.fix


def test_an_adapter_of_modules_the_base_lacks_exits_2(monkeypatch, capsys, tmp_path, tiny_base_dir, adapter):
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["c_attn"]}))
    code, err = run_cli(monkeypatch, capsys, *audit_args(tiny_base_dir, adapter, tmp_path / "out"))
    assert code == 2 and "does not fit the base model" in err and "Target modules {'c_attn'} not found" in err
    assert "--ft-base" in err and "Traceback" not in err


def test_an_adapter_of_a_base_of_another_width_exits_2(monkeypatch, capsys, tmp_path, tok, tiny_base_dir):
    """peft failed only when the adapter was applied, after the base model's whole pass."""
    from peft import LoraConfig, get_peft_model

    narrow = tiny.tiny_llama(tok, hidden=32)
    with peft_wrap_quietly():
        get_peft_model(narrow, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(str(tmp_path / "adapter"))
    args = audit_args(tiny_base_dir, tmp_path / "adapter", tmp_path / "out")
    code, err = run_cli(monkeypatch, capsys, *args, "--ft-base", str(tiny_base_dir))
    assert code == 2 and "does not fit its base" in err and "8 tensor(s) have other shapes" in err
    assert "model.layers.0.self_attn.q_proj.lora_A.weight (4, 32) vs (4, 64)" in err and "--ft-base" in err


def test_a_truncated_adapter_exits_2(monkeypatch, capsys, tmp_path, tiny_base_dir, adapter):
    truncate(adapter / "adapter_model.safetensors", 0.9)
    code, err = run_cli(monkeypatch, capsys, *audit_args(tiny_base_dir, adapter, tmp_path / "out"))
    assert code == 2 and "adapter_model.safetensors is not a readable safetensors file" in err and "Save the adapter again" in err


def test_an_adapter_config_that_is_not_json_is_named(adapter, tiny_base_dir):
    (adapter / "adapter_config.json").write_text("{'r': 8,")
    with pytest.raises(ModelLoadError, match=r"adapter_config.json is not valid JSON") as exc:
        alignment.load_model(adapter)
    assert "save_pretrained" in exc.value.fix
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "NO_SUCH_METHOD", "base_model_name_or_path": str(tiny_base_dir)}))
    with pytest.raises(ModelLoadError, match=r"is not an adapter config peft .* can read"):
        alignment.load_model(adapter)


# -- 3. another architecture ------------------------------------------------------------------------


def test_another_architecture_with_the_same_shapes_exits_2(monkeypatch, capsys, tmp_path, tok, tiny_base_dir):
    gpt2 = tiny.save(tiny.tiny_gpt2(tok, layers=4), tok, tmp_path / "gpt2")  # 4 layers, width 64, same vocabulary
    base, ft = alignment.load_model(tiny_base_dir), alignment.load_model(gpt2)
    assert (base.n_layers, base.d_model) == (ft.n_layers, ft.d_model)
    code, err = run_cli(monkeypatch, capsys, *audit_args(tiny_base_dir, gpt2, tmp_path / "out"))
    assert code == 2 and "llama, LlamaForCausalLM" in err and "gpt2, GPT2LMHeadModel" in err and "different architectures" in err


# -- 4. damaged files, through the CLI ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_model_safetensors_exits_2(monkeypatch, capsys, tmp_path, tiny_base_dir, damage):
    ft = shutil.copytree(tiny_base_dir, tmp_path / "ft")
    weights = ft / "model.safetensors"
    if damage == "truncated":
        truncate(weights)
    else:
        data = bytearray(weights.read_bytes())
        data[10:30] = b"x" * 20
        weights.write_bytes(bytes(data))
    code, err = run_cli(monkeypatch, capsys, *audit_args(tiny_base_dir, ft, tmp_path / "out"))
    assert code == 2 and f"{weights} is not a readable safetensors file" in err and "Download or copy the checkpoint again" in err


def test_organisms_build_on_a_truncated_base_exits_2_before_training(monkeypatch, capsys, tmp_path, tiny_base_dir):
    base = shutil.copytree(tiny_base_dir, tmp_path / "base")
    truncate(base / "model.safetensors")
    code, err = run_cli(monkeypatch, capsys, "organisms", "build", "--base", str(base), "--no-progress")
    assert code == 2 and "is not a readable safetensors file" in err
    assert not (Path(os.environ["NEURONLENS_CACHE"]) / "organisms").exists()  # nothing was trained


def test_a_config_that_is_not_json_is_named(tmp_path, tiny_base_dir):
    ft = shutil.copytree(tiny_base_dir, tmp_path / "ft")
    (ft / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON") as exc:
        alignment.load_model(ft)
    assert "config.json" in exc.value.fix


def test_a_sharded_checkpoint_missing_a_shard_is_named(tmp_path, tiny_base_dir):
    ft = shutil.copytree(tiny_base_dir, tmp_path / "ft")
    names = list(load_file(ft / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: ("model-00001-of-00002.safetensors" if i % 2 else "model.safetensors") for i, n in enumerate(names)}}
    (ft / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"names shard\(s\) that are not in the folder: model-00001-of-00002.safetensors"):
        alignment.load_model(ft)


def test_a_truncated_pytorch_bin_is_named_damaged_not_unsafe(tmp_path, tiny_base_dir):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny_base_dir / "config.json", folder)
    torch.save(load_file(tiny_base_dir / "model.safetensors"), folder / "pytorch_model.bin")
    truncate(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="damaged PyTorch checkpoint"):
        alignment.load_model(folder)


# -- 5. CLI wording ---------------------------------------------------------------------------------


def test_an_unreadable_config_fix_names_the_cli_flag(tmp_path, tiny_base_dir):
    ft = shutil.copytree(tiny_base_dir, tmp_path / "ft")
    (ft / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLoadError, match="Cannot read the model config") as exc:
        alignment.load_model(ft).n_layers  # noqa: B018
    assert "--trust-remote-code" in exc.value.fix and "trust_remote_code=True in Python" in exc.value.fix

"""distill/export.py: the exportable forward equals the model's, the ONNX graph has dynamic sizes and
matches PyTorch on real photos (onnxruntime), bad input gets one line and exit code 2."""
import json

import numpy as np
import pytest
import torch

from distill import export, models
from distill.spaces import DEPTH_UP_TO_SCALE

pytest.importorskip("onnxruntime")


def test_exportable_forward_is_the_models():
    torch.manual_seed(0)
    model = models.build_model("tiny", DEPTH_UP_TO_SCALE).eval()
    wrapped = export.exportable(model)
    assert isinstance(wrapped, export.ExportableDepthAnything)
    for shape in ((1, 3, 42, 56), (2, 3, 70, 28)):
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(wrapped(x), model(pixel_values=x).predicted_depth)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model") / "run" / "final"
    models.save_model(models.build_model("tiny", DEPTH_UP_TO_SCALE), path)
    return path.parent  # a training run: resolved to its final/


def run_export(model, out, precision):
    assert export.main(["--model", str(model), "--output", str(out), "--precision", precision,
                        "--check-sizes", "56", "98"]) == 0
    return out


@pytest.fixture(scope="module")
def fp32_export(saved_model, tmp_path_factory):
    return run_export(saved_model, tmp_path_factory.mktemp("export") / "onnx", "fp32")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_matches_pytorch_at_two_sizes(saved_model, fp32_export, tmp_path, precision):
    import onnxruntime as ort

    out = fp32_export if precision == "fp32" else run_export(saved_model, tmp_path / "onnx", precision)
    info = json.loads((out / "export.json").read_text())
    sizes = {tuple(r["size"]) for r in info["parity"]}
    assert len(info["parity"]) >= 4 and len({s[0] for s in sizes}) == 2  # >= 2 photos x 2 sizes
    assert info["max_relative_l2"] <= export.TOLERANCE[precision] and info["output_space"] == "depth:uts"
    for name in ("config.json", "preprocessor_config.json", "README.md"):
        assert (out / name).is_file()
    # both models were fed what the model's own image processor (the folder's) prepares at each size
    from transformers import AutoImageProcessor

    from distill.inference import processor_at_size

    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.to_dict() == AutoImageProcessor.from_pretrained(saved_model / "final").to_dict()
    name, photo = export.check_images([])[0]
    photo = photo.copy()  # writable, as the processor wants
    prepared = {tuple(processor_at_size(processor, s)(images=photo, return_tensors="np")["pixel_values"].shape[-2:])
                for s in (56, 98)}
    assert prepared == {tuple(r["size"]) for r in info["parity"] if r["image"] == name}
    # dynamic batch and sizes: a shape never seen at export time
    session = ort.InferenceSession(str(out / info["file"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 14 * 5, 14 * 9)).astype(np.float16 if precision == "fp16" else np.float32)
    assert session.run(None, {"pixel_values": x})[0].shape == (3, 70, 126)


def test_release_carries_the_onnx_file(saved_model, fp32_export, tmp_path):
    from distill import release as hub

    folder, _ = hub.build_release(str(saved_model), "me/tiny", tmp_path / "release", onnx=fp32_export)
    assert (folder / "onnx" / "model.onnx").read_bytes() == (fp32_export / "model.onnx").read_bytes()
    card = (folder / "README.md").read_text()
    assert "## ONNX" in card and 'ort.InferenceSession("onnx/model.onnx"' in card
    assert card.index("## ONNX") < card.index("## Output space")
    other = tmp_path / "other" / "final"
    models.save_model(models.build_model("tiny", DEPTH_UP_TO_SCALE), other)
    with pytest.raises(hub.ReleaseError, match="exported from"):  # an export of another model
        hub.build_release(str(other), "me/tiny", tmp_path / "release2", onnx=fp32_export)


@pytest.mark.parametrize("argv, message", [
    (["--output", "x"], "--model is required"),
    (["--model", "{tmp}", "--output", "{tmp}/o"], "not a model directory"),
    (["--model", "{model}", "--output", "{file}"], "not a directory"),
    (["--model", "{model}", "--output", "{tmp}/o", "--check-sizes", "0"], "--check-sizes"),
    (["--model", "{model}", "--output", "{tmp}/o", "--check-images", "{tmp}/missing.jpg"], "missing.jpg"),
])
def test_bad_input_one_line_exit_2(saved_model, tmp_path, argv, message, capsys):
    (tmp_path / "file").write_text("x")
    argv = [a.format(tmp=tmp_path, model=saved_model, file=tmp_path / "file") for a in argv]
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written


def test_fp16_refuses_a_model_whose_depth_leaves_float16s_range(tmp_path, capsys):
    """A relative model's scale is free (the distill-gain hybrid teacher drifted to ~1e11): the fp16
    export says so in one line, exits 2 and leaves no ONNX file."""
    from distill.spaces import RELATIVE_DISPARITY

    model = models.build_model("tiny", RELATIVE_DISPARITY)
    with torch.no_grad():  # ReLU head: a constant 1e6 output
        model.head.conv3.weight.zero_()
        model.head.conv3.bias.fill_(1e6)
    models.save_model(model, tmp_path / "model")
    out = tmp_path / "onnx"
    assert export.main(["--model", str(tmp_path / "model"), "--output", str(out), "--precision", "fp16",
                        "--check-sizes", "56"]) == 2
    err = capsys.readouterr().err
    assert "1e+06, beyond float16's range" in err and "--precision fp32" in err and err.count("\n") == 1
    assert not (out / "model_fp16.onnx").exists()
    assert export.main(["--model", str(tmp_path / "model"), "--output", str(out), "--check-sizes", "56"]) == 0

"""The package as users install it: the import that never breaks, python -m indeed_ext.info, the
version, the dependencies of the library and of the recipes, and the console scripts without the
train extra.

The tests import whichever indeed_ext is under test: this tree's, or an installed wheel's (`make
test-wheel` runs this file from a folder outside the checkout with INDEED_TEST_WHEEL=1, which adds
the checks of where it came from and what is installed beside it). Subprocesses get that same
package on PYTHONPATH and run in a temporary folder.
"""
import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import indeed_ext
from indeed_ext import _extension, info, ops, reference
from indeed_ext.recipes import cli

ROOT = Path(__file__).resolve().parents[1]  # the checkout these tests are in
PACKAGE = Path(indeed_ext.__file__).resolve().parent
WHEEL = os.environ.get("INDEED_TEST_WHEEL") == "1"
# Real mismatch: `make test-wheel` then installs another torch beside the wheel (MISMATCH_TORCH)
MISMATCH = os.environ.get("INDEED_TEST_MISMATCH") == "1"
needs_build_record = pytest.mark.skipif(_extension.build_info is None, reason="indeed_ext is not built")
needs_kernels = pytest.mark.skipif(not _extension.loaded, reason=f"indeed_ext._C did not load: {_extension.load_error}")

# A _C built for another torch, as the dynamic loader reports it, in a fresh interpreter.
SIMULATED_MISMATCH = textwrap.dedent("""\
    import importlib.abc, sys

    class BuiltForAnotherTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "indeed_ext._C":
                raise ImportError("indeed_ext/_C.so: undefined symbol: _ZN3c1018simulated_mismatchEv")

    sys.meta_path.insert(0, BuiltForAnotherTorch())
    """)

# One INDeeD training step on CPU tensors (in a fresh interpreter, with its warnings recorded).
TRAINING_STEP = textwrap.dedent("""\
    import json, sys, warnings
    import torch

    imported_by_torch = set(sys.modules)  # torch itself imports tqdm where it is installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import indeed_ext
        import indeed_ext.ops  # a second import warns no more
        from indeed_ext import _extension, ops, reference

        torch.manual_seed(0)
        model = indeed_ext.INDeeD(torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU()), 5, input_shape=(12,))
        criterion = indeed_ext.INDeeDLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        images, targets = torch.randn(8, 12), (torch.rand(8, 5) < 0.4).float()
        before = model.classifier.weight.detach().clone()
        loss = criterion(model(images).features, targets, model.classifier).loss
        loss.backward()
        optimizer.step()
    try:
        indeed_ext.decompose(torch.rand(2, 3), torch.rand(2, 3), backend="cpu")
        explicit_cpu = None
    except RuntimeError as e:
        explicit_cpu = str(e)
    print(json.dumps({
        "loaded": _extension.loaded,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "auto_cpu_is_reference": ops.resolve_backend("auto", torch.device("cpu"), "_six_head_loss_forward") is reference,
        "loss": loss.item(),
        "step_changed_weights": not torch.equal(before, model.classifier.weight),
        "explicit_cpu": explicit_cpu,
        "modules": sorted({m.split(".")[0] for m in set(sys.modules) - imported_by_torch}),
        "recipes_imported": "indeed_ext.recipes" in sys.modules,
    }))
    """)


def run_python(code, cwd, *args):
    """code in a fresh interpreter that imports the indeed_ext under test."""
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "PYTHONWARNINGS": "default"}
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def training_step(tmp_path, prelude=""):
    return json.loads(run_python(prelude + TRAINING_STEP, tmp_path).stdout)


# ----------------------------------------------------------------------------- the import that never breaks
@needs_build_record
def test_simulated_mismatch_warns_once_and_trains_on_the_reference(tmp_path):
    step = training_step(tmp_path, SIMULATED_MISMATCH)
    assert not step["loaded"]
    assert len(step["warnings"]) == 1, step["warnings"]
    warning = step["warnings"][0]
    assert warning.startswith("KernelsNotLoadedWarning: ") and "undefined symbol" in warning
    built, running = _extension.build_info.torch_version, torch.__version__
    assert f"Built for torch {built} " in warning and f"running on torch {running}." in warning
    assert "pip install --no-build-isolation" in warning
    assert step["auto_cpu_is_reference"]
    assert step["step_changed_weights"] and step["loss"] > 0
    assert "backend='cpu' needs indeed_ext's compiled kernels, which did not load" in step["explicit_cpu"]


def test_import_and_training_step(tmp_path):
    """The built kernels load without a warning and run the step; neither the import nor the step
    imports the recipes or a module of the train extra."""
    step = training_step(tmp_path)
    if _extension.loaded:
        assert step["loaded"] and step["warnings"] == []
        assert not step["auto_cpu_is_reference"] and step["explicit_cpu"] is None
    assert step["step_changed_weights"]
    assert not step["recipes_imported"]
    assert not set(cli.TRAIN_EXTRA) & set(step["modules"])


@pytest.mark.skipif(not MISMATCH, reason="make test-wheel sets INDEED_TEST_MISMATCH=1 under another torch")
def test_real_mismatch(tmp_path):
    """The wheel under a torch it was not built for: the loader's own error (undefined symbols; a CUDA
    build under a CPU-only torch misses libc10_cuda.so first), and the step trains."""
    assert not _extension.loaded
    assert re.search(r"undefined symbol|cannot open shared object file", _extension.load_error), _extension.load_error
    assert _extension.build_info.torch_version != torch.__version__
    step = training_step(tmp_path)
    assert len(step["warnings"]) == 1 and step["auto_cpu_is_reference"] and step["step_changed_weights"]


def test_explicit_backend_without_its_kernels_raises():
    """A CUDA tensor's kernel that is missing or unloaded: RuntimeError, never a silent fallback."""
    if ops._has_kernel("decompose", "CUDA"):
        pytest.skip("built with CUDA kernels")
    with pytest.raises(RuntimeError, match="built without cuda kernels|did not load"):
        ops.resolve_backend("cuda", torch.device("cuda"), "decompose")


# ----------------------------------------------------------------------------- python -m indeed_ext.info
def test_info_names_build_and_backends(tmp_path):
    out = run_python("import runpy; runpy.run_module('indeed_ext.info', run_name='__main__')", tmp_path).stdout
    assert f"indeed-ext {indeed_ext.__version__} at {PACKAGE}" in out
    assert f"built for:  {_extension.built_for()}" in out
    assert f"running on: torch {torch.__version__}" in out
    rows = dict(re.findall(r"^(cpu|cuda|triton|reference) +.+? {2,}(yes|no: .+)$", out, re.MULTILINE))
    assert rows.keys() == {"cpu", "cuda", "triton", "reference"}, out
    assert rows["reference"] == "yes"
    assert rows["cpu"] == ("yes" if _extension.loaded else "no: the compiled kernels did not load (above)")
    if not torch.cuda.is_available():
        assert rows["cuda"].startswith("no: ")
    assert 'backend="auto": cpu tensors -> ' + ("cpu" if _extension.loaded else "reference") in out


@needs_build_record
def test_info_under_the_simulated_mismatch(tmp_path):
    out = run_python(SIMULATED_MISMATCH + "from indeed_ext import info; print(info.report())", tmp_path).stdout
    assert "kernels:    did not load: ImportError: indeed_ext/_C.so: undefined symbol" in out
    assert re.search(r"^cpu +.+ {2}no: the compiled kernels did not load", out, re.MULTILINE)
    assert 'backend="auto": cpu tensors -> reference' in out
    assert "rebuild for this torch: " in out


@pytest.mark.parametrize("archs,capability,runs", [
    ("8.0;8.6;9.0", (8, 9), True),  # the sm_86 cubin
    ("8.0;9.0", (7, 5), False),
    ("8.0;9.0", (10, 0), False),  # no cubin of major 10, no PTX
    ("8.0;9.0+PTX", (12, 0), True),  # the driver compiles compute_90's PTX
    ("9.0+PTX", (8, 6), False),
    ("7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX", (10, 3), True),
])
def test_arch_runs(archs, capability, runs):
    assert info.arch_runs(archs, capability) is runs


# ----------------------------------------------------------------------------- version and build record
@needs_build_record
def test_version_names_the_torch_and_cuda_built_for():
    record = _extension.build_info
    assert indeed_ext.__version__ == record.version
    public, _, label = record.version.partition("+")
    torch_minor = ".".join(record.torch_version.split(".")[:2])
    device = "cu" + record.cuda_version.replace(".", "") if record.cuda_version else "cpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", public) and label == f"torch{torch_minor}{device}"


def _installed_wheel():
    """The installed (non-editable) indeed-ext distribution if its files are the package under test, else None.

    Editable installs are left out: their metadata dates from the last pip install, while the build
    record follows every in-place build. So are the .egg-info folders that builds leave in a checkout
    (no INSTALLER file)."""
    for dist in importlib.metadata.distributions(name="indeed-ext"):
        if dist.read_text("INSTALLER") is None or '"editable": true' in (dist.read_text("direct_url.json") or ""):
            continue
        if Path(dist.locate_file("indeed_ext/__init__.py")).resolve() == PACKAGE / "__init__.py":
            return dist
    return None


@needs_build_record
def test_version_agrees_with_the_installed_metadata():
    dist = _installed_wheel()
    if dist is None:
        pytest.skip(f"no installed wheel of indeed-ext is the one under test ({PACKAGE})")
    assert dist.version == indeed_ext.__version__


@needs_kernels
def test_build_record_holds_every_registered_schema():
    """setup.py reads the schemas from csrc/ops.cpp; _C registers them: the same ops, the same schemas."""
    registered = [name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("indeed::")]
    recorded = _extension.build_info.schemas
    assert sorted(recorded) == sorted(registered)
    for name, schema in recorded.items():
        assert torch._C.parse_schema(f"indeed::{schema}") == getattr(torch.ops.indeed, name).default._schema


# ----------------------------------------------------------------------------- dependencies and layout
def _imported_modules(path: Path):
    """(absolute top-level module, relative module) names of every import statement of a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield (None, node.module) if node.level else (node.module.split(".")[0], None)


def _third_party(paths):
    return {top for path in paths for top, _ in _imported_modules(path)
            if top and top not in sys.stdlib_module_names and top != "indeed_ext"}


def test_library_needs_torch_alone_and_never_imports_the_recipes():
    library = [p for p in PACKAGE.rglob("*.py") if "recipes" not in p.relative_to(PACKAGE).parts]
    assert _third_party(library) <= {"torch", "triton"}
    for path in library:
        for top, relative in _imported_modules(path):
            assert top != "indeed_ext" and "recipes" not in (relative or ""), f"{path} imports the recipes"


def test_recipes_need_the_train_extra_alone():
    assert _third_party((PACKAGE / "recipes").rglob("*.py")) <= {"torch", "numpy", "triton", "timm", *cli.TRAIN_EXTRA}


def test_pyproject_train_extra_and_console_scripts():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {re.split(r"[<>=!~;\[ ]", d)[0] for d in project["dependencies"]} == {"torch", "numpy"}
    assert sorted(project["optional-dependencies"]["train"]) == sorted(cli.TRAIN_EXTRA.values())
    for script, target in project["scripts"].items():
        module, function = target.split(":")
        assert module == "indeed_ext.recipes.cli" and script == f"indeed-{function}"
        assert callable(getattr(cli, function))


def test_the_bundled_mnist_digits_are_package_data():
    """ml-mnist's offline digits and their licence travel with the package (the wheel's too)."""
    folder = PACKAGE / "recipes" / "data" / "bundled_mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "README.md"):
        assert (folder / name).is_file(), name
    assert "CC BY-SA 3.0" in (folder / "README.md").read_text()


def test_console_script_without_the_train_extra(tmp_path):
    """No traceback: the missing modules and the install command, exit status 1."""
    hidden = ["PIL", "scipy"]
    code = (f"import sys\nfor m in {hidden!r}: sys.modules[m] = None  # import and find_spec see them missing\n"
            "sys.argv = ['indeed-study', '--help']\nfrom indeed_ext.recipes import cli\nsys.exit(cli.study())")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    message = result.stderr.splitlines()[-1]  # after the import's own warning, if _C did not load
    assert re.fullmatch(r"indeed-study: (.+, )?PIL \(package pillow\), (.+, )?scipy(, .+)? are not installed; "
                        r"the training recipes need the train extra: pip install 'indeed-ext\[train\]'", message), message
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- the installed wheel
@pytest.mark.skipif(not WHEEL, reason="make test-wheel sets INDEED_TEST_WHEEL=1")
def test_wheel_is_installed_apart_from_the_checkout():
    assert ROOT not in PACKAGE.parents and "site-packages" in PACKAGE.parts, PACKAGE
    assert _installed_wheel() is not None
    installed = [m for m in cli.TRAIN_EXTRA if importlib.util.find_spec(m) is not None]
    assert installed == [], f"installed beside the wheel without the train extra: {installed}"


@pytest.mark.skipif(not WHEEL, reason="make test-wheel sets INDEED_TEST_WHEEL=1")
def test_wheel_console_script_names_the_extra(tmp_path):
    script = Path(sys.executable).parent / "indeed-train"
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "pip install 'indeed-ext[train]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

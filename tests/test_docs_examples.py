"""The Python examples of README.md and docs/ are true: the runnable ones run and give what their
comments say, and every call in them to the library names parameters that exist (and, in the
signature lists of docs/cluster.md, the defaults the functions have)."""

import ast
import contextlib
import importlib
import inspect
import io
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block of a markdown file."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def _block(path: pathlib.Path, contains: str) -> str:
    found = [code for _, code in python_blocks(path) if contains in code]
    assert len(found) == 1, f"{path.name}: {len(found)} python blocks contain {contains!r}"
    return found[0]


def test_every_page_with_examples_is_looked_at():
    """The pages these tests read still have their blocks (a renamed page fails here)."""
    pages = {p.name: len(python_blocks(p)) for p in DOCS if python_blocks(p)}
    assert {"README.md", "backbones.md", "cluster.md", "data.md", "natural_images.md",
            "s1.md", "s4.md"} <= set(pages), pages


@pytest.mark.realdata
def test_readme_example_runs_on_real_mnist(real_manual_dir, monkeypatch):
    """README "Use it from research code", verbatim: t-SNE of 3000 MNIST test images, K-means on
    the embedding, NMI and ACC printed (0.62 and 0.65 here; raw pixels -> t-SNE -> K-means)."""
    monkeypatch.setenv("AECLUST_MANUAL_DIR", str(real_manual_dir))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_block(ROOT / "README.md", "from aeclust_jax.cluster import"), {})
    nmi, acc = (float(v) for v in out.getvalue().split())
    assert 0.5 < nmi < 1 and 0.5 < acc < 1, out.getvalue()


def test_backbones_example_runs_and_its_shapes_hold(tmp_path, monkeypatch):
    """docs/backbones.md's API block, verbatim, with x, key and a torchvision-named ResNet-50
    .pth of random weights (tests/torch_backbones.py) in the working folder."""
    torch = pytest.importorskip("torch")
    import torch_backbones as ref
    net = ref.randomise(ref.build(ref.TResNet, ref.TBottleneck, (3, 4, 6, 3)))
    torch.save(net.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ns = {"jax": jax, "jnp": jnp, "x": x, "key": jax.random.key(1)}
    exec(_block(ROOT / "docs" / "backbones.md", "import_torch"), ns)
    assert ns["logits"].shape == (2, 10)
    assert "batch_stats" in ns["updates"]
    # the comment's H/32 is the ImageNet stem's; the example's small stem divides by 8
    assert ns["state"]["intermediates"]["layer4"][0].shape == (2, 4, 4, 512)
    assert "fc" not in ns["variables"]["params"]                 # num_classes=0: features
    assert ns["model"].apply(ns["variables"], x, train=False).shape == (2, 2048)


def _library_object(module: str, name: str):
    """``from module import name``: an attribute, or a submodule not imported yet."""
    parent = importlib.import_module(module)
    return getattr(parent, name, None) or importlib.import_module(f"{module}.{name}")


def _calls_with_targets(code: str) -> list[tuple[str, object, ast.Call]]:
    """Calls in ``code`` to names imported from aeclust_jax (``f(...)``, ``mod.f(...)``):
    (shown name, the object, the call node)."""
    tree = ast.parse(code)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aeclust_jax"):
            for a in node.names:
                names[a.asname or a.name] = _library_object(node.module, a.name)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in names:
            calls.append((f.id, names[f.id], node))
        elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
              and f.value.id in names and inspect.ismodule(names[f.value.id])):
            calls.append((f"{f.value.id}.{f.attr}", getattr(names[f.value.id], f.attr), node))
    return calls


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_example_calls_match_the_signatures(page):
    """Every library call in a page's parseable python blocks binds to the function's signature:
    its keywords exist and its positional count fits (a renamed or dropped parameter fails)."""
    checked = 0
    for line, code in python_blocks(page):
        try:
            calls = _calls_with_targets(code)
        except SyntaxError:
            continue                   # a signature list, not code (docs/cluster.md, below)
        for shown, obj, node in calls:
            if any(isinstance(a, ast.Starred) for a in node.args) or any(
                    k.arg is None for k in node.keywords):
                continue
            sig = inspect.signature(obj)
            try:
                sig.bind(*node.args, **{k.arg: None for k in node.keywords})
            except TypeError as e:
                pytest.fail(f"{page.name}:{line + node.lineno - 1}: {shown}(...) does not fit "
                            f"{shown}{sig}: {e}")
            checked += 1
    if page.name in ("README.md", "backbones.md", "s1.md", "s4.md"):
        assert checked, f"{page.name}: no library call found in its examples"


def _split_top_level(params: str) -> list[str]:
    """'a (N, D), b=1, *, c="x"' -> ['a (N, D)', 'b=1', '*', 'c="x"']."""
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return [p for p in out + [cur.strip()] if p]


def _signature_lines(code: str) -> list[tuple[str, object, list[str]]]:
    """In a block that is a signature list rather than code (``name(param (shape), kw=default,
    ...) -> ...``), the lines naming a function of a module the block imports from: (name, the
    function, the shown parameters)."""
    modules = [importlib.import_module(m)
               for m in re.findall(r"^from (aeclust_jax[\w.]*) import", code, re.M)]
    found = []
    for ln in code.splitlines():
        m = re.match(r"^(\w+)\(", ln)
        fn = next((getattr(mod, m.group(1)) for mod in modules if m and hasattr(mod, m.group(1))),
                  None)
        if fn is None or not callable(fn):
            continue
        depth, i = 0, m.end() - 1              # the ")" that closes the "(" after the name
        for i in range(m.end() - 1, len(ln)):
            depth += {"(": 1, ")": -1}.get(ln[i], 0)
            if depth == 0:
                break
        rest = ln[i + 1:].strip()
        if depth == 0 and (not rest or rest.startswith(("->", "#"))):
            found.append((m.group(1), fn, _split_top_level(ln[m.end():i])))
    return found


def _unparseable_blocks(page: pathlib.Path) -> list[str]:
    out = []
    for _, code in python_blocks(page):
        try:
            ast.parse(code)
        except SyntaxError:
            out.append(code)
    return out


@pytest.mark.parametrize("page", [p for p in DOCS if _unparseable_blocks(p)], ids=lambda p: p.name)
def test_signature_lists_match_the_functions(page):
    """Signature lists (docs/cluster.md, docs/data.md): each line names the function's
    parameters in order, marks its keyword-only ones after ``*``, gives its defaults, and shows
    ``**kwargs`` where it takes them."""
    lines = [s for code in _unparseable_blocks(page) for s in _signature_lines(code)]
    assert lines, f"{page.name}: a non-code python block with no signature line"
    for name, fn, shown in lines:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        assert var_kw == any(s.startswith("**") for s in shown), (name, str(sig))
        shown = [s for s in shown if not s.startswith("**")]
        doc_names = [re.match(r"\w+", s).group(0) for s in shown if s != "*"]
        assert doc_names == [p.name for p in params][:len(doc_names)], (name, str(sig))
        assert all(p.default is not p.empty for p in params[len(doc_names):]), (name, str(sig))
        keyword_only = shown.index("*") if "*" in shown else len(shown)
        for i, s in enumerate(s for s in shown if s != "*"):
            p = params[i]
            assert (p.kind == p.KEYWORD_ONLY) == (i >= keyword_only), (name, p.name, str(sig))
            if "=" in s:
                assert ast.literal_eval(s.split("=", 1)[1]) == p.default, (name, p.name, str(sig))
            else:
                assert p.default is p.empty or p.name == "key", (name, p.name, str(sig))
    if page.name == "cluster.md":
        assert len(lines) >= 7, [name for name, _, _ in lines]

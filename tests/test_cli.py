"""The command-line tools: user errors vs bugs, argparse hygiene, help, progress output, and that
a run failing on its data leaves nothing behind."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from aeclust_jax import cli, runs
from aeclust_jax.cli import run_main
from aeclust_jax.config import ConfigError, config_dir, load_config
from aeclust_jax.errors import UsageError, UserError
from aeclust_jax.progress import Stages
from tiny_data import TINY_S1_YAML, write_tiny_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "AECLUST_MANUAL_DIR"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra)
    return env


def _run(args, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=_env(**env), timeout=600, cwd=REPO)


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- errors

def test_every_user_facing_error_is_a_user_error():
    from aeclust_jax.data import (ChecksumError, DatasetError, MissingFilesError,
                                  UnknownDatasetError)
    from aeclust_jax.train import TrainingDivergedError
    for cls in (UsageError, ConfigError, DatasetError, ChecksumError, MissingFilesError,
                UnknownDatasetError, runs.RunExistsError, runs.RunDirError, TrainingDivergedError):
        assert issubclass(cls, UserError), cls
    # and they stay what they were, for callers that catch the builtins
    assert issubclass(ConfigError, ValueError) and issubclass(MissingFilesError, FileNotFoundError)
    assert issubclass(runs.RunExistsError, FileExistsError)


def test_user_error_is_one_line_exit_2_and_a_bug_keeps_its_traceback_exit_1(tmp_path):
    # a real CLI: an abbreviated option is refused (allow_abbrev=False), one line, exit 2
    p = _run([str(REPO / "scripts" / "train.py"), "--model", "cae", "--epoch", "1",
              "--out", str(tmp_path / "a")])
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --epoch 1 (see train.py --help)"]
    assert not (tmp_path / "a").exists()
    # a bug (KeyError, ValueError, RuntimeError from the code, not the user) is not caught
    code = textwrap.dedent("""
        import sys
        from aeclust_jax.cli import run_main
        def main(argv):
            raise {}("internal")
        sys.exit(run_main(main))
    """)
    for exc in ("KeyError", "ValueError", "RuntimeError"):
        p = _run(["-c", code.format(exc)])
        assert p.returncode == 1, (exc, p.stderr)
        assert "Traceback" in p.stderr and f"{exc}: " in p.stderr and not _error_lines(p.stderr)


@pytest.mark.parametrize("main, argv, expect", [
    (cli.train_main, ["--model", "cae", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (cli.train_main, ["--model", "dsc", "--finetune-iter", "3"], "unrecognized arguments: --finetune-iter"),
    (cli.train_main, ["--model", "mlp", "--label", "random"], "unrecognized arguments: --label"),
    (cli.train_main, ["--model", "nope"], "unknown model 'nope'; choices: cae, cae_skip"),
    (cli.train_main, ["--epochs", "3"], "--model is required"),
    (cli.reproduce_main, ["s1", "--seed", "2"], "unrecognized arguments: --seed"),
    (cli.reproduce_main, ["s3", "--seeds", "0"], "--seeds must be >= 1"),
    (cli.reproduce_main, ["s9"], "unknown study 's9'"),
    (cli.data_main, ["mnist", "--offlin"], "unrecognized arguments: --offlin"),
    (cli.data_main, ["mnist", "--option", "size"], "--option expects KEY=VALUE"),
])
def test_usage_errors_are_one_line(main, argv, expect, capsys):
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err, err


def test_config_values_are_type_checked(tmp_path):
    from aeclust_jax.studies.skip_ae import S1Config
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2.5\n")
    with pytest.raises(ConfigError, match="epochs in .*c.yaml must be int, got 2.5"):
        load_config(S1Config, path)
    path.write_text("lr: 1e-3\nepochs: 3\n")          # YAML 1.1 reads 1e-3 as a string
    cfg = load_config(S1Config, path)
    assert cfg.lr == 0.001 and cfg.epochs == 3
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(S1Config, None, {"lr": -1.0}).validate()



def test_config_files_may_group_keys_by_section(tmp_path):
    """A config file written nested, by the --help sections, gives the config of the flat file;
    a key in the wrong section or given twice is one error naming it; a section name with a
    scalar value (S1's ``model``) is the field; the shipped S4 preset is grouped."""
    from aeclust_jax.studies.dsc import DSCConfig
    from aeclust_jax.studies.skip_ae import S1Config
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("model: cae\nepochs: 3\nlr: 0.5\ndataset: fashion_mnist\ncluster_limit: 500\n"
                    "seed: 4\nupsample: repeat\n")
    nested.write_text("model: cae\ntraining: {epochs: 3, lr: 0.5}\ndata:\n  dataset: fashion_mnist\n"
                      "evaluation: {cluster_limit: 500}\nrun: {seed: 4}\nupsample: repeat\n")
    assert load_config(S1Config, nested) == load_config(S1Config, flat) != S1Config()
    nested.write_text("model: {upsample: repeat}\ntraining: {epochs: 3}\n")
    cfg = load_config(S1Config, nested)
    assert (cfg.model, cfg.upsample, cfg.epochs) == (S1Config().model, "repeat", 3)
    nested.write_text("training: {epochs: 3, dataset: mnist}\n")
    with pytest.raises(ConfigError, match="dataset in .*nested.yaml belongs in section 'data', "
                                          "not 'training'"):
        load_config(S1Config, nested)
    nested.write_text("epochs: 2\ntraining: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="epochs is given twice"):
        load_config(S1Config, nested)
    nested.write_text("training: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\]"):
        load_config(S1Config, nested)
    preset = config_dir() / "s4_coil20.yaml"
    assert "\ntraining:\n" in preset.read_text()
    cfg = load_config(DSCConfig, preset)
    assert (cfg.channels, cfg.lambda2, cfg.pretrain_epochs, cfg.ro, cfg.d) == ((15,), 150.0, 100, 0.04, 12)


# ----------------------------------------------------------------------------- help

def test_train_help_without_model_lists_models_and_every_study(capsys):
    assert run_main(cli.train_main, ["--help"]) == 0
    out = capsys.readouterr().out
    for model in cli.MODEL_STUDY:
        assert model in out, model
    for option in ("--noise-std", "--latent-skip", "--labels-fraction", "--encoder-widths",
                   "--preset", "--lambda2"):
        assert option in out, option
    assert "--model NAME --help" in out


def test_study_help_shows_defaults(capsys):
    from aeclust_jax.studies.dsc import PRESETS
    with pytest.raises(SystemExit) as e:
        cli.train_main(["--model", "dsc", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {PRESETS['coil20'].pretrain_epochs})" in out and "(default: coil20)" in out
    with pytest.raises(SystemExit):
        cli.train_main(["--model", "cae", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 25)" in out and "(default: mnist)" in out and "(default: 3000)" in out
    with pytest.raises(SystemExit):
        cli.reproduce_main(["s3", "--help"])
    assert "(default: 5)" in " ".join(capsys.readouterr().out.split())


# ----------------------------------------------------------------------------- progress

def test_stages_time_always_and_print_only_when_enabled(capsys):
    timings = {}
    quiet = Stages(False, timings=timings)
    with quiet("tsne", "t-SNE"):
        pass
    with quiet("tsne", "t-SNE again"):
        pass
    assert capsys.readouterr().out == "" and set(timings) == {"tsne"} and timings["tsne"] >= 0
    loud = Stages(True)
    with loud("kmeans", "K-means (k=10)"):
        pass
    with pytest.raises(ZeroDivisionError):
        with loud("metrics", "NMI"):
            1 / 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("eval: K-means (k=10) ...") and lines[0].endswith(" s")
    assert lines[1] == "eval: NMI ... failed"


def test_data_preparation_is_quiet_unless_asked(tmp_path, capfd):
    from aeclust_jax import data
    raw = write_tiny_mnist(tmp_path / "raw", 20, 10)
    data.prepare("mnist", data_dir=tmp_path / "quiet", manual_dir=raw, verify_checksums=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    data.prepare("mnist", data_dir=tmp_path / "loud", manual_dir=raw, verify_checksums=False,
                 progress=True)
    out, err = capfd.readouterr()
    assert "mnist: preparing it once from its raw files" in out
    assert "Unknown size" not in out + err and "Generating" in err   # tfds' bars, asked for


@pytest.mark.parametrize("model", ["cae", "mlp", "dsc"])
def test_missing_dataset_creates_no_run_folder(model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", model, "--dataset", "hanja", "--out", str(out), "--no-progress"]
    assert run_main(cli.train_main, argv) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: hanja: pass folder=") and err.count("\n") == 1


@pytest.mark.slow
def test_failed_run_leaves_nothing_then_the_corrected_call_works(tmp_path):
    """The new user's story (issue 11): a run on missing data fails with one line and writes
    nothing; the same command with the data in place is then accepted (no "already holds a run")
    and prints one progress line per evaluation stage."""
    out, data_dir = tmp_path / "run", tmp_path / "data"
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_S1_YAML)
    argv = [str(REPO / "scripts" / "train.py"), "--model", "cae", "--dataset", "mnist",
            "--config", str(config), "--dataset-option", "download=false",
            "--dataset-option", "verify_checksums=false", "--out", str(out)]
    (tmp_path / "empty").mkdir()
    p = _run(argv + ["--no-progress"], AECLUST_MANUAL_DIR=str(tmp_path / "empty"),
             AECLUST_DATA_DIR=str(data_dir))
    assert p.returncode == 2, p.stderr
    assert _error_lines(p.stderr) == [p.stderr.strip().splitlines()[-1]]
    assert "raw file(s) not found" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout == "" and "Unknown size" not in p.stderr and "Generating" not in p.stderr
    assert not out.exists()

    write_tiny_mnist(tmp_path / "raw" / "mnist")        # $AECLUST_MANUAL_DIR/<name>/
    p = _run(argv, AECLUST_MANUAL_DIR=str(tmp_path / "raw"), AECLUST_DATA_DIR=str(data_dir))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mnist: preparing it once from its raw files" in p.stdout
    assert "Unknown size" not in p.stdout + p.stderr
    for stage in ("eval: encode 40 test images", "eval: t-SNE of 40 latents", "eval: K-means (k=10",
                  "eval: NMI / ACC / ARI of the latent t-SNE"):
        assert stage in p.stdout, stage
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scale"].startswith("0-1") and 0 <= metrics["nmi"] <= 1
    assert set(metrics["eval_seconds"]) >= {"encode", "tsne", "kmeans", "metrics"}


def test_tables_say_their_scale():
    from aeclust_jax.studies import dsc, pretrain, skip_ae
    settings = {"seeds": 1, "epochs": [1], "batch_size": [32], "optimizer": "adam", "lr": None,
                "train_limit": 0, "cluster_limit": 40, "platform": "cpu", "machine": "x"}
    header = [l for l in skip_ae.markdown_table([], settings, []).splitlines() if l.startswith("| dataset")][0]
    assert header.count("(0-100)") == 5                # NMI/ACC/ARI columns, stored 0-1 in JSON
    assert "ACC (0-1" in dsc.markdown_table([]) and "NMI (0-1" in dsc.markdown_table([])
    assert "ours (0-1)" in pretrain.results_markdown([], [], [], 1, 10)


def test_options_generated_from_a_config_dataclass():
    import dataclasses

    from aeclust_jax.cli import make_parser
    from aeclust_jax.config import add_config_options, config_overrides

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        lr: float = dataclasses.field(default=0.1, metadata={"help": "peak rate"})
        mode: str = dataclasses.field(default="a", metadata={"help": "mode", "choices": ("a", "b")})
        augment: bool = True
        options: dict = dataclasses.field(default_factory=dict)
        steps: int | None = None

    p = make_parser("t")
    add_config_options(p, Cfg)
    assert "peak rate (default: 0.1)" in " ".join(p.format_help().split())
    args = p.parse_args(["--lr", "1e-3", "--no-augment", "--options", "size=32",
                         "--options", "name=x", "--steps", "7"])
    assert config_overrides(args, Cfg) == {"lr": 1e-3, "augment": False, "steps": 7,
                                           "options": {"size": 32, "name": "x"}}
    assert config_overrides(p.parse_args([]), Cfg) == {}        # untyped options stay unset
    with pytest.raises(UsageError, match="invalid choice: 'c'"):
        p.parse_args(["--mode", "c"])
    with pytest.raises(ConfigError, match="--options expects KEY=VALUE"):
        config_overrides(p.parse_args(["--options", "size"]), Cfg)


def test_generated_options_for_tuples_none_aliases_and_command_line_defaults():
    import dataclasses

    from aeclust_jax.cli import make_parser
    from aeclust_jax.config import add_config_options, config_overrides, field

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        widths: tuple[int, ...] = field((64, 10), "widths")
        std: float | None = field(0.03, "init std")
        dataset_options: dict = field(dict, "builder options")
        progress: bool = field(False, "bars", cli_default=True)

    p = make_parser("t")
    add_config_options(p, Cfg)
    text = " ".join(p.format_help().split())
    assert "widths (default: 64 10)" in text and "bars (default: True)" in text
    args = p.parse_args(["--widths", "3", "5", "7", "--std", "None", "--dataset-option", "a=1",
                         "--dataset-options", "b=x"])
    assert config_overrides(args, Cfg) == {"widths": [3, 5, 7], "std": None, "progress": True,
                                           "dataset_options": {"a": 1, "b": "x"}}
    assert config_overrides(p.parse_args(["--widths", "--no-progress"]), Cfg) == {
        "widths": [], "progress": False}
    with pytest.raises(UsageError, match="--std: invalid float value: 'x'"):
        p.parse_args(["--std", "x"])


@pytest.mark.parametrize("study", [s.module for s in __import__("aeclust_jax.studies",
                                                                   fromlist=["STUDIES"]).STUDIES])
def test_every_study_has_one_option_per_config_field_with_help(study):
    """The registry's studies: each config field is an option of train.py, with its help."""
    import dataclasses
    import importlib

    from aeclust_jax.studies import STUDIES
    mod = importlib.import_module(f"aeclust_jax.studies.{study}")
    (cfg_cls,) = [v for k, v in vars(mod).items() if k.endswith("Config") and
                  dataclasses.is_dataclass(v) and v.__module__.startswith(mod.__name__)]
    parser = mod.train_parser()
    flags = {o for a in parser._actions for o in a.option_strings}
    for f in dataclasses.fields(cfg_cls):
        assert "--" + f.name.replace("_", "-") in flags, (study, f.name)
        assert f.metadata.get("help"), (study, f.name)
    entry = next(s for s in STUDIES if s.module == study)
    assert entry.load() is mod and all(cli.MODEL_STUDY[m] == study for m in entry.models)


def _study_configs():
    import dataclasses
    import importlib

    from aeclust_jax.studies import STUDIES
    for s in STUDIES:
        mod = importlib.import_module(f"aeclust_jax.studies.{s.module}")
        (cls,) = [v for k, v in vars(mod).items() if k.endswith("Config") and
                  dataclasses.is_dataclass(v) and v.__module__.startswith(mod.__name__)]
        yield s.module, mod, cls


def test_every_study_config_speaks_the_one_vocabulary():
    """docs/studies.md, "One vocabulary": a batch size is ``[<stage>_]batch_size``, a training
    parameter of a stage is ``<stage>_<param>`` with a known stage, the cluster count is
    ``n_clusters``, K-means restarts ``kmeans_n_init``, a subset's seed ``subset_seed``, a
    ``*_limit`` caps a count at N with 0 = all. (Before the renames this failed on S1's
    n_cluster, S2's clusters / kmeans_init, S5's classifier_batch / ae_batch / data_seed, S3's
    None-means-all limits.)"""
    import dataclasses

    from aeclust_jax.config import RENAMED, STAGES, TRAINING_PARAMS, section_of
    for study, _, cls in _study_configs():
        for f in dataclasses.fields(cls):
            name, where = f.name, (study, f.name)
            assert name not in RENAMED, where
            if "batch" in name:
                assert name.endswith("batch_size") or name == "last_batch", where
            if "cluster" in name:
                assert name in ("n_clusters", "cluster_limit"), where
            if "n_init" in name or "restart" in f.metadata["help"].lower():
                assert name == "kmeans_n_init", where
            if name.endswith("seed"):
                assert name in ("seed", "subset_seed"), where
            if name.endswith("_limit"):
                assert " N " in f.metadata["help"] and "0: all" in f.metadata["help"], where
            stage, _, param = name.partition("_")
            if param in TRAINING_PARAMS and name not in TRAINING_PARAMS:     # <stage>_<param>
                assert stage in STAGES + ("eval",), where
                assert section_of(name) == ("evaluation" if stage == "eval" else "training"), where


def test_help_is_in_sections_and_renamed_options_name_their_new_name(tmp_path, capsys):
    """Every study's --help shows its options under the same sections; an old option name is one
    error naming the new one; a config file or a run's saved config.yaml with an old key loads
    into the new field."""
    from aeclust_jax.config import SECTIONS, section_of
    from aeclust_jax.studies.skip_ae import S1Config
    for study, mod, cls in _study_configs():
        text = mod.train_parser().format_help()
        shown = [s for s in SECTIONS if f"\n{s} options:\n" in text]
        assert shown == [s for s in SECTIONS if any(section_of(f) == s for f in
                                                    cls.__dataclass_fields__)], study
    assert section_of("resnet_lr") == section_of("pretrain_batch_size") == "training"
    assert section_of("kmeans_n_init") == section_of("eval_batch_size") == "evaluation"
    assert section_of("test_per_class") == section_of("train_limit") == "data"
    assert section_of("subset_seed") == "data" and section_of("seed") == "run"
    assert run_main(cli.train_main, ["--model", "dae_skip", "--n-cluster", "40"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "error: argument --n-cluster: was renamed --cluster-limit (see train.py --help)"]
    saved = tmp_path / "config.yaml"
    saved.write_text("n_cluster: 40\neval_batch: 64\nepochs: 2\n")
    cfg = load_config(S1Config, saved)
    assert (cfg.cluster_limit, cfg.eval_batch_size, cfg.epochs) == (40, 64, 2)
    from aeclust_jax import runs        # ... and compares equal to the same config under new names
    assert runs.config_diff({"n_cluster": 40, "epochs": 2}, {"cluster_limit": 40, "epochs": 2}) == []
    assert runs.config_diff({"n_cluster": 40}, {"cluster_limit": 50}) == ["cluster_limit (40 -> 50)"]
    saved.write_text("n_cluster: 40\ncluster_limit: 50\n")        # both: the old one is unknown
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_cluster'\]"):
        load_config(S1Config, saved)


@pytest.mark.parametrize("study", [s.module for s in __import__("aeclust_jax.studies",
                                                                   fromlist=["STUDIES"]).STUDIES])
def test_every_study_package_keeps_its_submodules_under_their_names(study):
    """Each study is a package (config.py, recipe.py, report.py where it reproduces) whose star
    imports re-export everything: an imported name ``config`` (say ``from aeclust_jax import
    config``) would replace the package's ``config`` submodule, silently."""
    import importlib
    import pkgutil

    mod = importlib.import_module(f"aeclust_jax.studies.{study}")
    subs = {m.name for m in pkgutil.iter_modules(mod.__path__)}
    assert {"config", "recipe"} <= subs, (study, subs)
    for sub in subs:
        assert getattr(mod, sub) is importlib.import_module(f"{mod.__name__}.{sub}"), (study, sub)
    assert mod.train_main is mod.recipe.train_main


def test_tools_keep_compilations_on_disk_and_a_loaded_program_gives_the_same_numbers(tmp_path):
    """enable_compile_cache (every command-line tool calls it): the folder from
    $AECLUST_XLA_CACHE, `off` turns it off; a second process loads the first one's compiled
    program from the folder (no compile) and computes the same bits."""
    script = textwrap.dedent("""
        import sys, time
        from aeclust_jax.cli import enable_compile_cache
        print("cache", enable_compile_cache())
        import jax, jax.numpy as jnp
        hits = []
        jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if "cache_hits" in e else None)
        def loss(w, x):                              # a small conv net's loss
            for k in w:
                x = jnp.tanh(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC")))
            return jnp.mean(x ** 2)
        keys = jax.random.split(jax.random.key(0), 3)
        w = [jax.random.normal(keys[0], (3, 3, 1, 8)), jax.random.normal(keys[1], (3, 3, 8, 1))]
        g = jax.jit(jax.grad(loss))(w, jax.random.uniform(keys[2], (4, 28, 28, 1)))
        print("hits", len(hits))
        print("sum", float(sum(jnp.sum(v.astype(jnp.float64)) for v in jax.tree.leaves(g))).hex())
    """)
    env = {k: v for k, v in _env().items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    def run(cache):
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=dict(env, AECLUST_XLA_CACHE=cache), timeout=300, cwd=REPO)
        assert p.returncode == 0, p.stderr[-2000:]
        return dict(line.split(" ", 1) for line in p.stdout.splitlines())
    first, second = run(str(tmp_path / "xla")), run(str(tmp_path / "xla"))
    assert first["cache"] == second["cache"] == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())
    assert int(first["hits"]) == 0 and int(second["hits"]) > 0
    assert first["sum"] == second["sum"]



@pytest.mark.parametrize("value", ["off", "0", "OFF"])
def test_compile_cache_off(value, monkeypatch):
    monkeypatch.setenv("AECLUST_XLA_CACHE", value)
    assert cli.enable_compile_cache() is None

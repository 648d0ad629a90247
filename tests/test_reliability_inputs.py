"""Reliability against bad input (issue #9): what a user types, checkpoints and image folders we did not write.

- A table of command lines: each prints one line, exits 2, leaves no run folder,
  and the Python API raises ValueError/TypeError with the same message.
- A table of calls to the attacks/defenses API with bad eps, images and labels.
- Corrupted checkpoints through `rlab eval`, `rlab classifier eval` and `--resume`.
- A fuzz test (hypothesis) over the image-folder loader: random bytes, empty
  files, wrong sizes, decompression bombs, nested junk.
(A checkpoint that carries code is refused: tests/test_runs.py.)
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import random
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import attacks
import defenses
from rlab.cli import COMMANDS, _Parser, split_command, main
from rlab.config import add_config_arguments, config_from_namespace
from rlab.vision.data import load_dataset
from rlab.errors import UserError
from rlab.runs import CheckpointError, load_checkpoint, save_checkpoint, use_runs_root

pytestmark = pytest.mark.xdist_group(__name__)  # one worker keeps this module's tally (under pytest-xdist)
TALLY = {"argv": 0, "api": 0, "checkpoints": 0, "folders": 0}
TINY_RL = ["train", "--algo", "a2c", "--env", "CartPole-v1", "--steps", "128", "--n-envs", "4", "--n-steps", "32",
           "--eval-episodes", "1", "--no-progress", "--device", "cpu", "--threads", "1"]
TINY_CLS = ["classifier", "train", "--dataset", "mnist5k", "--train-subset", "200", "--batch-size", "100",
            "--epochs", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny RL run folder and one tiny classifier run folder, shared by the module's tests."""
    root = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("RLAB_CACHE", str(tmp_path_factory.getbasetemp() / "rlab-cache"))
    out = {}
    with use_runs_root(root):
        for kind, argv in (("rl", TINY_RL), ("classifier", TINY_CLS)):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(argv) == 0
            out[kind] = Path(buf.getvalue().strip().splitlines()[-1])
    mp.undo()
    return out


def config_count(root: Path) -> int:
    return len(list(root.rglob("config.json"))) if root.exists() else 0


# ----------------------------------------------------------------------------- the command-line table

# (argv, fragment of the one-line message); "{rl}" / "{cls}" stand for trained run folders.
# Lines marked PARSE fail in argparse (a type conversion); they have no Python-API twin.
PARSE = "parse"
CLI_CASES = [
    ("train --env CartPol-v1", "did you mean 'cartpole-v1'"),
    ("train --env LunarLander-v2", "did you mean 'lunarlander-v3'"),
    ("train --env cartpole", "unknown environment 'cartpole'"),
    ("train --env Ant-v5 --steps 64", "cannot be made here"),
    ("train --algo nope", "is not allowed; choose from vpg, ac, a2c, ppo"),
    ("train --steps 0", "--steps must be positive, got 0"),
    ("train --steps -5", "--steps must be positive"),
    ("train --steps many", PARSE),
    ("train --n-envs 0", "--n-envs must be >= 1"),
    ("train --n-steps 0", "--n-steps must be >= 1"),
    ("train --lr 0", "--lr must be positive"),
    ("train --lr=-1e-3", "--lr must be positive"),
    ("train --lr -1e-3", PARSE),
    ("train --gamma 1.5", "--gamma must be in [0, 1]"),
    ("train --gae-lambda -0.1", "--gae-lambda must be in [0, 1]"),
    ("train --seed -1", "--seed must be >= 0"),
    ("train --seeds 0", "--seeds must be >= 1"),
    ("train --eval-episodes 0", "--eval-episodes must be >= 1"),
    ("train --hidden 0", "--hidden needs positive layer sizes"),
    ("train --hidden 64,x", PARSE),
    ("train --adv-obs pgd --adv-eps -0.1", "needs --adv-eps in (0, 1]"),
    ("train --adv-obs pgd --adv-eps 5", "needs --adv-eps in (0, 1]"),
    ("train --adv-obs cw", "--adv-obs: 'cw' is not allowed"),
    ("train --algo vpg --baseline median", "--baseline: 'median' is not allowed"),
    ("train --algo ppo --returns immediate", "it belongs to vpg"),
    ("train --device cuda --steps 64", "not available on this machine"),
    ("train --device cuda:3 --steps 64", "not available on this machine"),
    ("train --device tpu --steps 64", "unknown device 'tpu'"),
    ("train --resume /nonexistent/run", "not a run folder"),
    ("train --resume {cls}", "not an rl run folder"),
    ("train --resume {rl} --seeds 2", "--seeds would be ignored"),
    ("eval /nonexistent/run", "not a run folder"),
    ("eval {rl} --episodes 0", "--episodes must be >= 1"),
    ("eval {rl} --device cuda", "not available on this machine"),
    ("eval {cls}", "not an rl run folder"),
    ("classifier train --dataset mnist", "did you mean 'mnist5k'"),
    ("classifier train --dataset cifar100", "unknown dataset 'cifar100'"),
    ("classifier train --dataset imagefolder:", "imagefolder needs a path"),
    ("classifier train --dataset imagefolder:/nonexistent/imgs", "does not exist"),
    ("classifier train --model resnet", "--model: 'resnet' is not allowed"),
    ("classifier train --epochs 0", "--epochs must be >= 1"),
    ("classifier train --batch-size 1", "--batch-size must be >= 2"),
    ("classifier train --lr 0", "--lr must be > 0"),
    ("classifier train --momentum 1", "--momentum must be in [0, 1)"),
    ("classifier train --train-subset -1", "--train-subset must be >= 0"),
    ("classifier train --eps 0.1", "together with --adv"),
    ("classifier train --adv pgd --eps -0.1", "needs --eps in (0, 1]"),
    ("classifier train --adv pgd --eps 2", "needs --eps in (0, 1]"),
    ("classifier train --adv pgd --eps 0", "needs --eps in (0, 1]"),
    ("classifier train --adv cw --eps 0.1", "--adv: 'cw' is not allowed"),
    ("classifier train --eps 1/0", PARSE),
    ("classifier train --device cuda", "not available on this machine"),
    ("classifier train --device tpu", "unknown device 'tpu'"),
    ("classifier train --resume /nonexistent/run", "not a run folder"),
    ("classifier train --resume {rl}", "not a classifier run folder"),
    ("classifier eval /nonexistent/run", "not a run folder"),
    ("classifier eval {cls} --per-class -1", "--per-class must be >= 0"),
    ("classifier eval {cls} --per-class 1000", "fewer than the 1000"),
    ("classifier eval {cls} --dataset mnist", "did you mean 'mnist5k'"),
    ("classifier eval {cls} --device cuda", "not available on this machine"),
    ("classifier eval {rl}", "not a classifier run folder"),
    ("bench attacks", "--classifier run_dir is required"),
    ("bench attacks --classifier {cls} --attacks pgdd", "did you mean 'pgd'"),
    ("bench attacks --classifier {cls} --attacks fgsm,deepfool", "unknown attack 'deepfool'"),
    ("bench attacks --classifier {cls} --defenses jpg", "did you mean 'jpeg'"),
    ("bench attacks --classifier {cls} --eps -0.1", "must lie in [0, 1]"),
    ("bench attacks --classifier {cls} --eps 0,8/255,1.5", "must lie in [0, 1]"),
    ("bench attacks --classifier {cls} --eps 0,x", PARSE),
    ("bench attacks --classifier {cls} --steps 0", "--steps must be >= 1"),
    ("bench attacks --classifier {cls} --n 0", "--n must be >= 1"),
    ("bench attacks --classifier {cls} --device cuda", "not available on this machine"),
    ("bench attacks --classifier /nonexistent/run", "not a run folder"),
    ("bench attacks --classifier {rl}", "not a classifier run folder"),
    ("bench certify {cls} --device cuda", "not available on this machine"),
    ("bench certify {rl} --sigma 0.25", "not a classifier run folder"),
    ("bench certify {cls}", "was trained without --noise-sd"),
    ("bench certify {cls} --sigma 0.25 --alpha 0", "--alpha must be a probability in (0, 1)"),
    ("bench rl-attack /nonexistent/run --eps 0.1", "not a run folder"),
    ("bench rl-attack {rl} --eps -0.1", "--eps must be a list of numbers >= 0"),
    ("bench rl-attack {rl} --eps 5", "<= 1 (fractions of the observation scale)"),
    ("bench rl-attack {rl} --eps 0,1.5", "<= 1 (fractions of the observation scale)"),
    ("bench rl-attack {rl} --methods cw", "--methods: 'cw' is not allowed"),
    ("bench rl-attack {rl} --episodes 0", "--episodes must be >= 1"),
    ("plot robustness /nonexistent/results.csv", "results file not found"),
    ("sweep", "say what to run"),
    ("sweep --workers -1 --base x", "--workers must be >= 0"),
    ("trian", "did you mean 'train'"),
    ("classifier trian", "unknown subcommand 'trian'"),
    ("bench atacks", "unknown subcommand 'atacks'"),
]


@pytest.mark.parametrize("line, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_lines_print_one_line_and_exit_2(line, fragment, trained, runs_root, capsys):
    argv = line.format(rl=trained["rl"], cls=trained["classifier"]).split()
    before = config_count(runs_root)
    if fragment == PARSE:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        rc = exit_.value.code
    else:
        rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment == PARSE or fragment.lower() in err.lower(), err
    assert config_count(runs_root) == before, "a user error left a run folder behind"
    TALLY["argv"] += 1

    name, rest = split_command(argv)
    if fragment == PARSE or name is None:
        return
    module_name, cls_name, fn_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    parser = _Parser(prog=f"rlab {name}")
    add_config_arguments(parser, cls)
    ns = parser.parse_args(rest)
    with pytest.raises((ValueError, TypeError)) as e:
        getattr(module, fn_name)(config_from_namespace(cls, ns))
    assert err == f"rlab {name}: error: {e.value}\n"


# ----------------------------------------------------------------------------- the attacks / defenses API


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


X = torch.rand(4, 1, 3, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])
API_ATTACKS = ["fgsm", "pgd", "mifgsm", "difgsm", "square", "simba"]
# (what is wrong, call(attack, model) -> anything, exception, fragment)
API_CASES = [
    ("eps negative", lambda a, m: a(m, X, Y, eps=-0.1), ValueError, "eps must be in [0, 1]"),
    ("eps above the input range", lambda a, m: a(m, X, Y, eps=1.5), ValueError, "eps must be in [0, 1]"),
    ("eps nan", lambda a, m: a(m, X, Y, eps=float("nan")), ValueError, "eps must be in"),
    ("eps list with a negative", lambda a, m: a(m, X, Y, eps=[0.1, -0.1]), ValueError, "eps must be in"),
    ("eps empty list", lambda a, m: a(m, X, Y, eps=[]), ValueError, "empty"),
    ("eps a string", lambda a, m: a(m, X, Y, eps="0.1"), TypeError, "eps must be a number"),
    ("images above 1", lambda a, m: a(m, X + 1, Y, eps=0.1), ValueError, "bounds [0, 1]"),
    ("images below 0", lambda a, m: a(m, X - 1, Y, eps=0.1), ValueError, "bounds [0, 1]"),
    ("images uint8", lambda a, m: a(m, (X * 255).to(torch.uint8), Y, eps=0.1), TypeError, "floating-point"),
    ("images a list", lambda a, m: a(m, X.tolist(), Y, eps=0.1), TypeError, "torch.Tensor"),
    ("images without a batch axis", lambda a, m: a(m, X.flatten(), Y, eps=0.1), ValueError, "shape"),
    ("labels too large", lambda a, m: a(m, X, Y + 3, eps=0.1), ValueError, "[0, 2]"),
    ("labels negative", lambda a, m: a(m, X, Y - 1, eps=0.1), ValueError, ">= 0"),
    ("labels float", lambda a, m: a(m, X, Y.float(), eps=0.1), TypeError, "integer"),
    ("labels of the wrong length", lambda a, m: a(m, X, Y[:2], eps=0.1), ValueError, "shape (4,)"),
]


@pytest.mark.parametrize("attack_name", API_ATTACKS)
@pytest.mark.parametrize("what, call, exc, fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_attack_api_rejects_bad_input_clearly(attack_name, what, call, exc, fragment):
    kwargs = {"seed": 0} if attack_name in ("square", "simba") else {}
    attack = attacks.make_attack(attack_name, **kwargs)
    with pytest.raises(exc) as e:
        call(attack, _Linear().eval())
    assert fragment in str(e.value) and "\n" not in str(e.value)
    TALLY["api"] += 1


NAN_X = X.masked_fill(X > 0.5, float("nan"))


@pytest.mark.parametrize("call, fragment", [
    pytest.param(lambda m: attacks.make_attack(a, **({"seed": 0} if a in ("square", "simba") else {}))(m, NAN_X, Y, eps=0.1),
                 "finite", id=f"{a} images with NaN") for a in API_ATTACKS] + [
    pytest.param(lambda m: attacks.make_attack("onepixel", seed=0)(m, X.flatten(), Y, eps=0.1), "shape",
                 id="onepixel images without a batch axis"),
    pytest.param(lambda m: attacks.make_attack("hopskipjump", seed=0)(m, X, Y + 3, eps=0.1), "[0, 2]",
                 id="hopskipjump labels too large"),
    pytest.param(lambda m: attacks.make_attack("hopskipjump", seed=0)(m, NAN_X, Y, eps=0.1), "finite",
                 id="hopskipjump images with NaN"),
    pytest.param(lambda m: defenses.make_defense("jpeg")(X + 1), "[0, 1]", id="jpeg images above 1"),
    pytest.param(lambda m: defenses.make_defense("blur")(X - 1), "[0, 1]", id="blur images below 0"),
    pytest.param(lambda m: defenses.make_defense("bitdepth")(NAN_X), "finite", id="bitdepth images with NaN"),
])
def test_known_gaps_in_attack_and_defense_input_checks(call, fragment):
    with pytest.raises((ValueError, TypeError)) as e:
        call(_Linear().eval())
    assert fragment in str(e.value)


@pytest.mark.parametrize("call, exc, fragment", [
    (lambda: attacks.make_attack("pgdd"), ValueError, "Did you mean 'pgd'"),
    (lambda: attacks.make_attack(7), TypeError, "must be a string"),
    (lambda: attacks.PGD(steps=0), ValueError, "steps"),
    (lambda: defenses.make_defense("jpg"), ValueError, "Did you mean 'jpeg'"),
    (lambda: defenses.make_defense("jpeg", quality=0), ValueError, "quality"),
    (lambda: defenses.make_defense("blur", sigma=-1), ValueError, "sigma"),
    (lambda: defenses.make_defense("jpeg", colour=1), TypeError, "defense 'jpeg'"),
])
def test_named_constructors_reject_bad_names_and_options(call, exc, fragment):
    with pytest.raises(exc) as e:
        call()
    assert fragment in str(e.value)
    TALLY["api"] += 1


# ----------------------------------------------------------------------------- corrupted checkpoints


def _truncate(fraction):
    return lambda data: data[: int(len(data) * fraction)]


def _drop_member(suffix):
    def corrupt(data):
        src = zipfile.ZipFile(io.BytesIO(data))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if not info.filename.endswith(suffix):
                    dst.writestr(info, src.read(info))
        return out.getvalue()
    return corrupt


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# name -> bytes -> bytes (None: last.pt becomes a folder)
CORRUPTIONS = {
    "empty": lambda data: b"",
    "one byte": lambda data: data[:1],
    "first 100 bytes": lambda data: data[:100],
    "half": _truncate(0.5),
    "all but the last byte": lambda data: data[:-1],
    "zeroed header": lambda data: b"\0" * 64 + data[64:],
    "text file": lambda data: b"this is not a checkpoint\n" * 20,
    "pickle member missing": _drop_member("data.pkl"),
    "tensor data missing": _drop_member("/0"),
    "a bare tensor": lambda data: _torch_bytes(torch.zeros(3)),
    "a dict of something else": lambda data: _torch_bytes({"weights": torch.zeros(3), "step": 1}),
    "weights of another shape": None,
    "a folder": None,
}
COMMANDS_ON_RUNS = [("rl", "eval {run} --episodes 1 --device cpu"),
                    ("rl", "train --resume {run} --steps 256 --no-progress --device cpu"),
                    ("classifier", "classifier eval {run} --device cpu --threads 1 --per-class 1"),
                    ("classifier", "classifier train --resume {run} --epochs 2 --device cpu --threads 1"),
                    ("classifier", "bench certify {run} --sigma 0.25 --n 10 --n0 5 --images 2 --attack-images 0 "
                                   "--device cpu --threads 1")]


@pytest.mark.parametrize("kind, command", COMMANDS_ON_RUNS, ids=[c[1].split(" {")[0] for c in COMMANDS_ON_RUNS])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_checkpoint_is_one_line_exit_2_and_leaves_the_folder_alone(kind, command, corruption, trained,
                                                                             tmp_path, runs_root, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained[kind], run)
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    if corruption == "a folder":
        ckpt.unlink()
        ckpt.mkdir()
    elif corruption == "weights of another shape":
        state = load_checkpoint(ckpt)
        weights = state["learner"]["agent"] if kind == "rl" else state["model"]
        name = next(k for k, v in weights.items() if v.ndim == 2)
        weights[name] = torch.zeros(3, 3)
        save_checkpoint(ckpt, state)
    else:
        ckpt.write_bytes(CORRUPTIONS[corruption](good))
    metrics = (run / "metrics.csv").read_bytes()
    before = config_count(runs_root)
    assert main(command.format(run=run).split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint" in err and str(run) in err and "Traceback" not in err, err
    assert (run / "metrics.csv").read_bytes() == metrics, "a failed resume changed metrics.csv"
    assert config_count(runs_root) == before
    TALLY["checkpoints"] += 1


@pytest.mark.parametrize("kind, command", COMMANDS_ON_RUNS, ids=[c[1].split(" {")[0] for c in COMMANDS_ON_RUNS])
def test_truncated_config_json_is_one_line_exit_2(kind, command, trained, tmp_path, capsys):
    """config.json is written atomically, but a user may still damage it (RunDir.config lets JSONDecodeError out)."""
    run = tmp_path / "run"
    shutil.copytree(trained[kind], run)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text[: len(text) // 2])
    assert main(command.format(run=run).split()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err


def test_random_bytes_and_bit_flips_never_load_silently(tmp_path):
    """Seeded random garbage and bit flips: CheckpointError, or (flips in tensor data) the same bytes never load."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.randn(32, 32, generator=torch.Generator().manual_seed(0)), "step": 3})
    good = path.read_bytes()
    rng = random.Random(1)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(60):
        data = bytearray(good)
        if i % 2:
            data = bytearray(rng.randrange(256) for _ in range(rng.randint(1, 3000)))
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    TALLY["checkpoints"] += 60
    assert outcomes == {"refused": 60, "loaded": 0}


def test_corrupted_decode_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    for i, cls in enumerate(["a", "b"]):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.png").write_bytes(image_bytes((8, 6), "RGB", "PNG", i))
    first = load_dataset(f"imagefolder:{root}")
    (cached,) = (tmp_path / "cache" / "imagefolder").glob("*.npz")
    good = cached.read_bytes()
    for junk in (b"", good[:100], b"PK\x03\x04" + bytes(500), _npz(images=np.zeros((5, 3, 6, 8), np.uint8))):
        cached.write_bytes(junk)
        assert torch.equal(load_dataset(f"imagefolder:{root}").images, first.images)
        TALLY["checkpoints"] += 1


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ----------------------------------------------------------------------------- fuzzing the image-folder loader


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims an absurd size (a decompression bomb) over a few bytes of data."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def image_bytes(size: tuple[int, int], mode: str, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format=fmt)
    return buf.getvalue()


# kinds of entries in a class folder: fine (decodes), bad (must be rejected), maybe (may decode), ignored
ENTRY = st.one_of(
    st.tuples(st.just("png"), st.sampled_from(["L", "RGB", "RGBA"]), st.sampled_from([".png", ".PNG"])),
    st.tuples(st.just("jpg"), st.sampled_from(["L", "RGB"]), st.sampled_from([".jpg", ".jpeg"])),
    st.tuples(st.just("other size"), st.just("RGB"), st.just(".png")),
    st.tuples(st.just("random bytes"), st.binary(min_size=0, max_size=300), st.sampled_from([".png", ".jpg"])),
    st.tuples(st.just("empty"), st.just(b""), st.sampled_from([".png", ".gif", ".webp"])),
    st.tuples(st.just("truncated"), st.floats(0.05, 0.95), st.sampled_from([".png", ".jpg"])),
    st.tuples(st.just("bomb"), st.just(b""), st.just(".png")),
    st.tuples(st.just("folder named like an image"), st.just(b""), st.just(".png")),
    st.tuples(st.just("nested image"), st.just("RGB"), st.just(".png")),
    st.tuples(st.just("not an image suffix"), st.binary(max_size=50), st.sampled_from([".txt", "", ".npy"])),
)
IMAGE_KINDS = ("png", "jpg", "other size", "random bytes", "empty", "truncated", "bomb")
TREE = st.dictionaries(st.sampled_from(["cat", "dog", "a b", "été", ".hidden", "9"]),
                       st.lists(ENTRY, min_size=0, max_size=5), min_size=0, max_size=4)


def build_tree(root: Path, tree: dict) -> tuple[set[str], int]:
    """Write `tree`; return (kinds of the files the loader sees as images, how many there are)."""
    kinds, n_images = set(), 0
    root.mkdir()
    for cls, entries in tree.items():
        (root / cls).mkdir()
        for i, (kind, arg, suffix) in enumerate(entries):
            f = root / cls / f"{i}{suffix}"
            if kind in ("png", "jpg"):
                f.write_bytes(image_bytes((8, 6), arg, "PNG" if kind == "png" else "JPEG", i))
            elif kind == "other size":
                f.write_bytes(image_bytes((5, 5), arg, "PNG", i))
            elif kind == "random bytes":
                f.write_bytes(b"junk" + arg)
            elif kind == "empty":
                f.write_bytes(b"")
            elif kind == "truncated":
                data = image_bytes((8, 6), "RGB", "PNG" if suffix == ".png" else "JPEG", i)
                f.write_bytes(data[: max(1, int(len(data) * arg))])
            elif kind == "bomb":
                f.write_bytes(png_claiming(60_000, 60_000))
            elif kind == "folder named like an image":
                f.mkdir()
            elif kind == "nested image":
                (root / cls / f"sub{i}").mkdir()
                (root / cls / f"sub{i}" / f"{i}.png").write_bytes(image_bytes((8, 6), "RGB", "PNG", i))
            else:
                f.write_bytes(arg)
            if kind not in ("folder named like an image", "nested image", "not an image suffix") \
                    and not cls.startswith("."):
                kinds.add(kind)
                n_images += 1
    return kinds, n_images


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=TREE)
def test_image_folder_loader_fuzz(tree):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        kinds, n_images = build_tree(root, tree)
        classes = sorted(c for c in tree if not c.startswith("."))
        empty_class = any(not any(k in IMAGE_KINDS for k, *_ in tree[c]) for c in classes)
        mixed_sizes = "other size" in kinds and bool(kinds & {"png", "jpg"})
        try:
            data = load_dataset(f"imagefolder:{root}")
        except UserError as e:
            message = str(e)
            assert "\n" not in message and str(root) in message, message
            explained = kinds & {"random bytes", "empty", "bomb", "truncated"} or mixed_sizes or empty_class
            assert explained or not classes, f"rejected a good folder: {message}"
        else:
            assert classes and not empty_class and not mixed_sizes
            assert not kinds & {"random bytes", "empty", "bomb"}, "a file that is not an image was loaded"
            assert data.images.dtype == torch.uint8 and len(data) == n_images
            assert data.classes == classes and int(data.labels.max()) < len(classes)
        TALLY["folders"] += 1


def reliability_report() -> str:
    """The counts of the tables above (issue #9's closing note), printed by conftest's terminal summary."""
    if not any(TALLY.values()):
        return ""
    return (f"reliability: {TALLY['argv']} bad command lines, {TALLY['api']} bad API calls, "
            f"{TALLY['checkpoints']} corrupted files, {TALLY['folders']} fuzzed image folders")

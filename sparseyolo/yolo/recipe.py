"""The training recipe of the reference models: one recipe for every variant, and how its runs are shipped.

The recipe (`sparseyolo demo --train`) trains each variant from scratch on the deepforest aerial tiles with an
identical budget and fixed seeds (or converts and fine-tunes a shipped one); `ship_variant` writes a run's result as
a shipped reference model (`sparseyolo.yolo.reference`).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sparseyolo.threads import threads as using_threads
from sparseyolo.yolo.reference import load_reference_model, run_weights, save_reference

# torch, the models and the datasets are imported where they are used: the variants and the recipe's settings
# (`sparseyolo demo --help`) load without them


@dataclass(frozen=True)
class Variant:
    """A reference model: its shipped name and how it is made.

    From scratch (the default): the model YAML `cfg` (with the stem's `sparsify` override, if any) trained by the
    recipe. Converted (`convert`): a shipped dense reference (`convert["from"]`) turned into sparse blocks
    (`sparseyolo.yolo.convert.convert`, `p3`/`p4` paths), nothing trained but what follows. A variant whose stem
    uses the finder then trains it from boxes and calibrates it for recall (`FINDER`), and a converted one is
    fine-tuned `finetune` epochs with distillation from its dense model, its stem (and finder) frozen."""

    name: str
    cfg: str
    note: str = ""
    seed: int = 0  # replaces the recipe's seed (a second seed of a variant measures the seed-to-seed spread)
    sparsify: dict | None = None  # override of the YAML stem's sparsify settings (e.g. the finder)
    convert: dict | None = None  # {"from": dense reference name, "p3": bool, "p4": bool}: made by conversion
    finetune: int = 0  # epochs of distillation fine-tune after conversion (teacher: the dense reference)
    composites: dict | None = None  # its own training composites (`Recipe.composites`); None: the recipe's
    train_extra: dict | None = None  # train keywords added to the recipe's (e.g. an ablation's `dff_without`)
    shipped: bool = True  # False: trained for a measurement only (`ABLATIONS`), its weights stay in its run

    def recipe(self, recipe: Recipe) -> Recipe:
        """The recipe this variant is made by: `recipe` with the variant's seed, its composites if it has any, and
        its `train_extra` keywords."""
        own = {"composites": self.composites} if self.composites is not None else {}
        if self.train_extra:
            own["extra"] = {**recipe.extra, **self.train_extra}
        return dataclasses.replace(recipe, seed=self.seed, **own)

    @property
    def has_finder(self) -> bool:
        return (self.sparsify or {}).get("method") == "finder" or (self.convert or {}).get("method") == "finder"


# How the shipped finders are trained and calibrated (`sparseyolo.yolo.finder.train_finder`)
# (the loss pools over the widest context margin, 16 px, for every variant: one finder serves them all)
FINDER = {"recall": 0.97, "steps": 6000, "loss_margin": 16}
# the fine-tune's train args: a fixed small learning rate (an explicit optimizer: Ultralytics' `auto` ignores lr0),
# no warm-up, the stem frozen, no mosaic (the recipe's last epochs are without it too)
FINETUNE = {"optimizer": "AdamW", "lr0": 5e-5, "lrf": 1.0, "warmup_epochs": 0, "freeze": [0], "mosaic": 0.0}
FINDER_SPARSIFY = {"method": "finder", "dilate": 8}  # a from-scratch finder stem (margin: sparse stem and P3 path)


# Training composites a recipe can mix into the forest tiles (`Recipe(composites=COMPOSITES)`): real crowns of the
# training scenes on real object-free ground (`sparseyolo.data.composite`), a quarter of them empty ground.
# 320x320 frames, the recipe's tile size, so the crowns keep their native scale: Ultralytics resizes each image's
# long side to `imgsz` (320), so a 1280x720 composite would shrink its crowns 4x while the forest tiles are seen at
# 1:1. Building 320-px frames directly is what tiling a large composite would give, without crowns cut at tile
# borders and with fresh ground in every frame; mosaic augmentation then puts four frames side by side at 1:1.
# At 320x320, fg 0.01 is about one crown, 0.03 two to three, 0.1 about six. 64 frames add ~65% to the 98 training
# tiles (and to the epoch time). The DFF variants train with them (`DFF_COMPOSITES`); `demo --train --composites`
# adds them to the others.
COMPOSITES = {"size": (320, 320), "fg": (0.0, 0.01, 0.03, 0.1), "images": 64, "seed": 0}
COMPOSITE_KEYS = ("size", "fg", "images", "seed")
# the DFF references learn a per-image policy: they train on varied scenes (forest tiles + composites, empty to
# crowded), the other references on the forest tiles alone
DFF_COMPOSITES = COMPOSITES

VARIANTS = {
    v.name: v
    for v in (
        Variant("yolov8n-aerial", "yolov8n.yaml", "stock Ultralytics YOLOv8n"),
        Variant("yolov8n-aerial-seed1", "yolov8n.yaml", "yolov8n-aerial with seed 1: the seed-to-seed spread", 1),
        Variant(
            "yolov8n-sparse-aerial",
            "yolov8n.yaml",
            "yolov8n-aerial converted: sparse stem (layers 0-4) with a foreground finder; fine-tuned with distillation",
            convert={"from": "yolov8n-aerial", "method": "finder", "p3": False, "p4": False},
            finetune=10,
        ),
        Variant(
            "yolov8n-sparse-p3-aerial",
            "yolov8n-sparse-p3.yaml",
            "from scratch: sparse stem with a foreground finder and a sparse P3 path (P3 fusion and head at active "
            "sites)",
            sparsify=FINDER_SPARSIFY,
        ),
        Variant(
            "yolov8n-sparse-p34-aerial",
            "yolov8n.yaml",
            "yolov8n-aerial converted: sparse stem, P3 and P4 paths with a foreground finder; fine-tuned with "
            "distillation",
            convert={"from": "yolov8n-aerial", "method": "finder", "p3": True, "p4": True},
            finetune=10,
        ),
        Variant(
            "yolov8n-dff-aerial",
            "yolov8n-dff.yaml",
            "YOLOv8n backbone + Dynamic Feature Fusion neck, trained on forest tiles + composites (empty to crowded)",
            composites=DFF_COMPOSITES,
        ),
        Variant(
            "yolov8n-dff-aerial-seed1",
            "yolov8n-dff.yaml",
            "yolov8n-dff-aerial with seed 1: the spread",
            1,
            composites=DFF_COMPOSITES,
        ),
        Variant(
            "yolov8n-sparse-dff-aerial",
            "yolov8n-dff.yaml",
            "yolov8n-dff-aerial converted: sparse stem (layers 0-4) with a foreground finder before the DFF neck; "
            "fine-tuned with distillation, the neck's policy frozen but for its box-supervised parts",
            convert={"from": "yolov8n-dff-aerial", "method": "finder", "p3": False, "p4": False},
            finetune=10,
            composites=DFF_COMPOSITES,
        ),
    )
}

# The retrained ablations of `yolov8n-dff-aerial` (`sparseyolo bench neck --retrained`): the same recipe and seed,
# the neck trained without one part after the warm-up (`dff_without`, see `sparseyolo.yolo.curriculum`) or without
# the box supervision of its policy (`dff_supervise=0`). Trained by `sparseyolo demo --train --variants NAME`
# (~110 min each here, two at once), not shipped: the weights stay in the run (`<project>/NAME/weights/final.pt`).
ABLATIONS = {
    v.name: v
    for v in (
        dataclasses.replace(VARIANTS["yolov8n-dff-aerial"], name=f"yolov8n-dff-aerial-no-{part}",
                            note=f"yolov8n-dff-aerial retrained without {what}", train_extra=extra, shipped=False)
        for part, what, extra in (
            ("supervision", "the box supervision of its policy", {"dff_supervise": 0.0}),
            ("routing", "attention routing", {"dff_without": "routing"}),
            ("depth", "adaptive depth", {"dff_without": "depth"}),
            ("pixel", "pixel gates", {"dff_without": "pixel"}),
        )
    )
}  # fmt: skip


@dataclass
class Recipe:
    """The training budget shared by every variant (Ultralytics train arguments).

    `composites`: None (the shipped recipe: forest tiles only), or the arguments of
    `build_composite_dataset(split="train", ...)` (`size`, `fg`, `images`, `seed`; e.g. `COMPOSITES`): those
    training composites are then trained on beside the forest tiles (`training_data`); validation stays on the
    held-out tiles."""

    epochs: int = 200
    imgsz: int = 320
    batch: int = 8
    nbs: int = 8  # one optimizer step per batch (Ultralytics' default 64 would step every 8 batches)
    seed: int = 0  # each variant's own `seed` replaces it
    tile: int = 320
    overlap: float = 0.2
    extra: dict = field(default_factory=lambda: {"close_mosaic": 10, "patience": 0, "cache": "ram"})
    composites: dict | None = None

    def train_args(self) -> dict:
        return {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "nbs": self.nbs,
            "seed": self.seed,
            "deterministic": True,
            "device": "cpu",
            "workers": 0,
            "amp": False,
            **self.extra,
        }

    def as_dict(self) -> dict:
        """The recipe as recorded with a run and a shipped model, JSON-normalised (tuples as lists); `composites`
        only when set, so the shipped recipe's record is what it always was."""
        d = json.loads(json.dumps(asdict(self)))
        if d["composites"] is None:
            del d["composites"]
        return d

    def training_data(self, data_yaml: str | Path, folder: str | Path) -> Path:
        """The dataset YAML to train on. Without `composites`: `data_yaml` (the aerial tiles) itself. With them:
        the training composites are built (cached, see `build_composite_dataset`) and a YAML is written in `folder`
        whose `train` lists the aerial training tiles and the composites, and whose `val` and `names` are
        `data_yaml`'s (Ultralytics accepts a list of folders for `train`)."""
        from sparseyolo.data.composite import build_composite_dataset

        data_yaml = Path(data_yaml)
        if self.composites is None:
            return data_yaml
        if not isinstance(self.composites, dict) or set(self.composites) - set(COMPOSITE_KEYS):
            raise ValueError(
                f"Recipe.composites must be None or a dict with keys from {COMPOSITE_KEYS}, got {self.composites!r}"
            )
        comp = build_composite_dataset(split="train", **_composite_args(self.composites)).parent
        data = yaml.safe_load(data_yaml.read_text())
        root = Path(data.get("path") or data_yaml.parent)

        def absolute(entry) -> list[str]:
            return [str(root / e) for e in (entry if isinstance(entry, list) else [entry])]

        mixed = {
            "path": str(root),
            "train": absolute(data["train"]) + [str(comp / "images" / "train")],
            "val": absolute(data["val"]),
            "names": data["names"],
        }
        key = hashlib.sha1(json.dumps([str(data_yaml.resolve()), str(comp)]).encode()).hexdigest()[:8]
        out = Path(folder) / f"data-composites-{key}.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(mixed, sort_keys=False))
        return out


def _composite_args(composites: dict) -> dict:
    """`Recipe.composites` as `build_composite_dataset` keywords (`size` a tuple: JSON gives a list)."""
    args = {**composites}
    if "size" in args:
        args["size"] = tuple(args["size"])
    return args


def recipe_command(recipe: Recipe, variants: list[str]) -> str:
    default = Recipe()
    parts = ["sparseyolo", "demo", "--train"]
    if variants != list(VARIANTS):
        parts += ["--variants", ",".join(variants)]
    if recipe.epochs != default.epochs:
        parts += ["--epochs", str(recipe.epochs)]
    if recipe.composites is not None and recipe.composites == COMPOSITES:
        parts.append("--composites")
    elif recipe.composites is not None:  # no flag gives other composites: the record says what the run used
        return f"{shlex.join(parts)}  # with Recipe(composites={recipe.composites!r})"
    return shlex.join(parts)


def train_variant(variant: Variant, recipe: Recipe, data_yaml: Path, project: Path, threads: int = 2, log=print):
    """Make (train, or resume) one variant under `project/<name>`; returns the path of its final checkpoint: the
    recipe's run for a from-scratch variant, the conversion for a converted one, then the finder's training and
    calibration and the fine-tune (see `Variant`)."""
    recipe = variant.recipe(recipe)
    run_dir = project / variant.name
    done = run_dir / "finished.json"
    spec = {"recipe": recipe.as_dict(), "variant": json.loads(json.dumps(asdict(variant)))}
    final = run_dir / "weights" / "final.pt"
    if done.is_file() and json.loads(done.read_text()).get("spec") == spec and final.is_file():
        log(f"{variant.name}: already made ({run_dir}), reused")
        return final
    with using_threads(threads):
        t0 = time.time()
        if variant.convert:
            model = _converted(variant, log)
        else:
            model = _trained(variant, recipe, data_yaml, project, log)
        if variant.has_finder:
            model = _with_finder(variant, model, run_dir, log)
        if variant.finetune:
            model = _finetuned(variant, recipe, model, data_yaml, project, log)
        from sparseyolo.yolo.convert import save_checkpoint

        save_checkpoint(model, final)
        done.write_text(json.dumps({"spec": spec, "seconds": time.time() - t0}))
    return final


def _trained(variant: Variant, recipe: Recipe, data_yaml: Path, project: Path, log):
    """The recipe's run of a from-scratch variant (resumed from its last checkpoint); returns its EMA model."""
    from sparseyolo.yolo.api import YOLO

    name = variant.name
    run_dir = project / name
    last = run_dir / "weights" / "last.pt"
    trained = run_dir / "trained.json"
    if not (trained.is_file() and json.loads(trained.read_text()).get("recipe") == recipe.as_dict()):
        if last.is_file():
            log(f"{name}: resuming from {last}")
            YOLO(str(last)).train(resume=True)
        else:
            log(f"{name}: training {variant.cfg} for {recipe.epochs} epochs, seed {recipe.seed} ({run_dir})")
            model = YOLO(variant.cfg, sparsify=variant.sparsify)
            data = recipe.training_data(data_yaml, project)  # the aerial tiles, plus composites when set
            model.train(data=str(data), project=str(project), name=name, exist_ok=True, **recipe.train_args())
        trained.write_text(json.dumps({"recipe": recipe.as_dict()}))
    return run_weights(last)


def _converted(variant: Variant, log):
    """The variant's dense reference converted to sparse blocks (finder margin: the model's context margin)."""
    spec = {**variant.convert}
    from sparseyolo.yolo.convert import convert

    dense = spec.pop("from")
    log(f"{variant.name}: converting {dense} ({spec})")
    return convert(load_reference_model(dense), **spec)


def _with_finder(variant: Variant, model, run_dir: Path, log):
    """`model` with its finder trained from boxes and calibrated (`FINDER`); the report goes to `finder.json`.

    A converted variant's finder starts fresh and learns from boxes alone, so converted variants with the same
    `FINDER` settings, seed and finder shape share one training (cached under the project's `finders/`); each is
    calibrated for its own context margin."""
    import torch

    from sparseyolo.yolo.finder import finder_sparsifiers, train_finder

    finder = finder_sparsifiers(model)[0].finder
    key = json.dumps([FINDER, variant.seed, [int(v) for v in finder.arch]], sort_keys=True)
    cache = run_dir.parent / "finders" / f"finder-{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"
    if variant.convert and cache.is_file():
        log(f"{variant.name}: the finder trained with the same settings ({cache}), calibrated for this model")
        finder.load_state_dict(torch.load(cache, map_location="cpu"))
        report = train_finder(model, seed=variant.seed, progress=False, **{**FINDER, "steps": 0})
        report["weights"] = f"finders/{cache.name} (the shared finder training of this project)"
    else:
        log(f"{variant.name}: training the finder ({FINDER})")
        report = train_finder(model, seed=variant.seed, progress=False, **FINDER)
        if variant.convert:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(finder.state_dict(), cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "finder.json").write_text(json.dumps({"settings": FINDER, **report}, indent=1, default=str))
    return model


def _finetuned(variant: Variant, recipe: Recipe, model, data_yaml: Path, project: Path, log):
    """`model` fine-tuned `variant.finetune` epochs on the recipe's data with distillation from its dense
    reference (`dff_teacher`); the stem (layer 0, with the finder) is frozen and the finder's state (weights,
    BatchNorm statistics, calibrated threshold) restored afterwards, so its calibration holds. A DFF neck runs the
    curriculum's fine-tune phase throughout: its policy frozen but for the box-supervised parts."""
    from sparseyolo.nn.finder import Finder
    from sparseyolo.yolo.api import YOLO
    from sparseyolo.yolo.convert import save_checkpoint

    name = f"{variant.name}-finetune"
    start = save_checkpoint(model, project / variant.name / "weights" / "converted.pt")
    finders = {k: copy.deepcopy(v.state_dict()) for k, v in model.named_modules() if isinstance(v, Finder)}
    args = {**recipe.train_args(), "epochs": int(variant.finetune), "close_mosaic": 0, **FINETUNE}
    if has_dff_neck(model):  # the neck keeps the policy it learnt: every epoch in the curriculum's fine-tune phase
        args.update(dff_warmup=0.0, dff_finetune=1.0)
    log(f"{variant.name}: fine-tuning {variant.finetune} epochs with distillation from {variant.convert['from']}")
    YOLO(str(start)).train(data=str(recipe.training_data(data_yaml, project)), project=str(project), name=name,
                           exist_ok=True, dff_teacher=variant.convert["from"], **args)  # fmt: skip
    tuned = run_weights(project / name / "weights" / "last.pt")
    modules = dict(tuned.named_modules())
    for k, state in finders.items():
        modules[k].load_state_dict(state)
    return tuned


def ship_variant(variant: Variant, recipe: Recipe, run_dir: Path, command: str, metrics: dict | None = None) -> Path:
    """Save the final (EMA) weights of a trained run as the shipped reference files of `variant`.

    The last epoch is shipped, not Ultralytics' `best.pt`: the validation tiles come from the held-out region
    that the evaluation measures, so choosing an epoch on them would tune the model to the test region."""
    recipe = variant.recipe(recipe)
    last = run_dir / "weights" / "final.pt"
    if not last.is_file():
        last = run_dir / "weights" / "last.pt"  # a run made before final.pt existed
    if not last.is_file():
        raise FileNotFoundError(f"no trained weights for {variant.name}: {last} is missing")
    model = run_weights(last)
    calibration = calibrate_reference(model, recipe) if has_dff_neck(model) else None
    tuned = run_dir.parent / f"{variant.name}-finetune"
    results = (tuned if variant.convert else run_dir) / "results.csv"
    rows = list(csv.DictReader(open(results))) if results.is_file() else []
    final = {k.strip(): float(v) for k, v in rows[-1].items()} if rows else {}
    info = {
        "name": variant.name,
        "cfg": variant.cfg,
        "note": variant.note,
        "command": command,
        "recipe": recipe.as_dict(),
        "epochs_trained": len(rows),
        "train_seconds": final.get("time"),
        "final_epoch_val_tiles": {k: v for k, v in final.items() if k.startswith(("metrics/", "val/"))},
        "metrics": metrics or {},
        "python": sys.version.split()[0],
    }
    made = {}
    if variant.convert:
        made["converted_from"] = variant.convert
    if variant.sparsify:
        made["sparsify"] = variant.sparsify
    if (run_dir / "finder.json").is_file():
        made["finder"] = json.loads((run_dir / "finder.json").read_text())
    if variant.finetune:
        made["finetune"] = {"epochs": variant.finetune, "teacher": variant.convert["from"], **FINETUNE}
    if made:
        info["made"] = made
    if calibration is not None:
        info["calibration"] = calibration
    return save_reference(model, variant.name, info)


CALIBRATION_BUDGET = 0.7  # the shipped DFF models' stored budget
CALIBRATION_TILES = 48


def has_dff_neck(model) -> bool:
    from sparseyolo.nn import dff_necks

    return bool(dff_necks(model))


def calibration_set(recipe: Recipe, tiles: int = CALIBRATION_TILES) -> tuple[list[str], str]:
    """The images a DFF reference is calibrated on, and their description: `tiles` evenly spaced training tiles
    (never the validation region), plus the recipe's training composites when it has them (the images the policy
    learnt to tell apart)."""
    from sparseyolo.data.aerial import build_aerial_dataset
    from sparseyolo.data.split import list_images
    from sparseyolo.yolo.budget import calibration_images

    data = build_aerial_dataset(tile=recipe.tile, overlap=recipe.overlap)
    images = [str(p) for p in calibration_images(data, tiles)]
    source = f"{len(images)} evenly spaced training tiles"
    if recipe.composites is not None:
        from sparseyolo.data.composite import build_composite_dataset

        comp = build_composite_dataset(split="train", **_composite_args(recipe.composites))
        frames = [str(p) for p in list_images(comp.parent / "images" / "train")]
        images, source = images + frames, f"{source} and the {len(frames)} training composites"
    return images, source


def calibrate_reference(model, recipe: Recipe) -> dict:
    """Calibrate a DFF reference model's neck to `CALIBRATION_BUDGET` on its `calibration_set`; returns the report
    stored in the model's JSON."""
    from sparseyolo.yolo.budget import calibrate

    images, source = calibration_set(recipe)
    report = calibrate(model, images, CALIBRATION_BUDGET, imgsz=recipe.imgsz, progress=False)
    report["source"] = source
    return report

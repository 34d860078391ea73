"""Named configurations: data, not code.

Each recipe is a description plus overrides on the defaults in config.py: the speed-run
recipe, a few baselines, and one recipe per seed report. A seed recipe lists every setting
it makes with where it comes from: `report` (with the report's own words), `unstated` (the
report is silent: our choice, or what its framework did by default) or `deviation` (we
knowingly differ, and why), plus the result the report states.
Never holds logic; `resolve_config` applies recipe < config file < --data < key=value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .auto import AUTO
from .config import Config, dotted_to_nested, format_value, from_dict, load_yaml, merge, nested_to_dotted
from .errors import UserError

SOURCES = ("report", "unstated", "deviation")


@dataclass(frozen=True)
class Setting:
    """One config key of a seed recipe and its provenance. `words` quotes the report (source=report);
    `why` explains an unstated choice or a deviation (and may add context to a report setting)."""
    key: str
    value: Any
    source: str
    words: str = ""
    why: str = ""


@dataclass(frozen=True)
class ReportedResult:
    """The number a seed report states, to put beside a measurement of the same thing."""
    metric: str  # what the report calls it, e.g. "test accuracy (best epoch)"
    value: float  # a fraction: 0.9005 for 90.05%
    epoch: int | None  # the epoch it was reached at, when the report says
    report: str  # the report's file prefix in shared/seeds, e.g. "004"
    data: str  # the data the report measured it on
    note: str = ""  # other numbers the report gives (final epoch, Kaggle, ...)
    # every epoch the report prints numbers for: (epoch, training accuracy, validation/test accuracy), None
    # where it gives only one; plotted and tabled beside a run's own curve (report.html, cifarlab compare)
    points: tuple[tuple[int, float | None, float | None], ...] = ()

    def as_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "report": self.report,
                "data": self.data, "note": self.note}


@dataclass(frozen=True)
class Rung:
    """One step of a report's ablation study: what it changed (dotted keys) on top of the step before,
    and the accuracy the report gives after it (None where it gives none)."""
    name: str
    changes: dict
    reported: float | None
    words: str
    why: str = ""  # what the report leaves open in this step and we chose


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    overrides: dict  # nested, applied on the config defaults
    settings: tuple[Setting, ...] = ()
    reported: ReportedResult | None = None
    # (dotted key, one-line reason): keys a user must set before this recipe can run as intended
    requires: tuple[tuple[str, str], ...] = ()
    # a report's ablation study in its own order: rungs applied one after another on the recipe `ladder_base`
    ladder: tuple[Rung, ...] = ()
    ladder_base: str = ""


def report(key: str, value: Any, words: str, why: str = "") -> Setting:
    return Setting(key, value, "report", words, why)


def unstated(key: str, value: Any, why: str) -> Setting:
    return Setting(key, value, "unstated", why=why)


def deviation(key: str, value: Any, why: str) -> Setting:
    return Setting(key, value, "deviation", why=why)


# Report 004 names mode "min" but says its lr fell "whenever the test loss stops increasing" and saw the cut
# after 18 epochs; only the max reading gives that timing whatever the loss curve (docs/RESULTS.md)
_PLATEAU_MAX_WHY = ("the report says min, but also that the lr falls 'whenever the test loss stops increasing' and "
                    "that the accuracy jumps 'after 18 epochs': in max mode a falling test loss keeps epoch 1 as "
                    "its best and the scheduler cuts after epoch 17 in every run, as the report saw; in min mode "
                    "our runs' lowest test loss came at epochs 11-15 and the cut after epoch 27 or never "
                    "(seed004-min, docs/RESULTS.md)")


# What PyTorch did for every seed report unless it says otherwise: the settings that differ from
# cifarlab's own defaults and change results.
def _pytorch_defaults(weight_decay: bool) -> list[Setting]:
    rows = [
        unstated("drop_last", False, "PyTorch's DataLoader keeps the last partial batch"),
        unstated("precision", "fp32", "PyTorch trains in fp32 unless told otherwise"),
        unstated("tta", "none", "no test-time augmentation is mentioned"),
        unstated("ema_decay", 0.0, "no weight averaging is mentioned"),
    ]
    if weight_decay:
        rows.append(unstated("optim.decay_bias", True, "torch.optim decays every parameter it is given, "
                             "biases and batch-norm weights included"))
    return rows


def _seed_recipe(name: str, description: str, settings: list[Setting], reported: ReportedResult,
                 requires: tuple = (), ladder: tuple = (), ladder_base: str = "") -> Recipe:
    keys = [s.key for s in settings]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise AssertionError(f"{name}: keys set twice: {sorted(dupes)}")
    overrides = dotted_to_nested({s.key: s.value for s in settings})
    return Recipe(name, description, overrides, tuple(settings), reported, requires, ladder, ladder_base)


# Report 003's ablation study, steps 1-10 in its order, on the course's starter BaseNet (recipe seed003-steps).
# Widths and kernel sizes of the deeper steps are not given: ours are marked in each rung's name.
_WIDER = {"model_args.widths": (32, 32, 64, 64, 128), "model_args.pool_after": (2, 4),
          "model_args.padding": "same", "model_args.kernel_size": 3}
SEED003_LADDER = (
    Rung("bn_after_conv", {"model_args.bn": "before_relu"}, 0.31,
         "I added a BatchNorm layer after the Conv layer and this improved the validation accuracy from 23% to 31%"),
    Rung("five_subblocks_pool_2_4", _WIDER, 0.38, "increased the number of these Conv Batch Norm subblocks to 5",
         "widths 32-128 and 3x3 same-padded convs: the report gives neither, and five 5x5 valid convs would "
         "leave nothing of a 32 px image"),
    Rung("sixth_subblock", {"model_args.widths": (32, 32, 64, 64, 128, 128)}, 0.42,
         "Adding another subblock gave another 4% improvement"),
    Rung("doubled_subblock", {"model_args.double": True}, 0.17,
         "Adding it twice decreased the validation accuracy to 17%"),
    Rung("residual", {"model_args.residual": True}, None,
         "After adding a residual connection (adding the input to the output), the validation accuracy gradually "
         "went up"),
    Rung("residual_scale_0.1", {"model_args.residual_scale": 0.1}, 0.48,
         "This took the model back to 48% validation accuracy"),
    Rung("bn1d_after_first_linear", {"model_args.fc_bn": True}, 0.42,
         "I added BatchNorm1D after the first Linear layer, but it decreased the validation accuracy to 42%"),
    # the report goes on from step 6 (its final network has no BatchNorm1d after the first linear layer)
    Rung("dataset_normalisation", {"model_args.fc_bn": False, "data.normalize": "dataset"}, 0.50,
         "Normalizing the dataset gave a 2% increase to the model"),
    Rung("flip_and_random_crop", {"augment.flip": 0.5, "augment.translate_px": 4}, 0.59,
         "(like Horizontal Flip and Random Crop) to the dataset, which increased the accuracy to 59%"),
    Rung("100_epochs", {"epochs": 100}, 0.65,
         "I increased the number of epochs to 100, and it increased the validation accuracy to 65%"),
)


def ladder_configs(recipe: Recipe) -> list[tuple[str, dict, dict, float | None]]:
    """(name, cumulative changes on ladder_base, this step's own changes, reported accuracy) per step, step 0
    (the base itself) first."""
    base = RECIPES[recipe.ladder_base].reported
    out = [("00-starter", {}, {}, base.value if base else None)]
    total: dict = {}
    for i, rung in enumerate(recipe.ladder, start=1):
        total = {**total, **rung.changes}
        out.append((f"{i:02d}-{rung.name}", dict(total), dict(rung.changes), rung.reported))
    return out


# what both speed-run recipes share: fastnet, big batches, label smoothing 0.2, alternating
# flip + 2 px translate, flip+translate TTA
_SPEEDRUN = {"model": "fastnet", "batch_size": 1024, "label_smoothing": 0.2,
             "augment.flip_mode": "alternate", "augment.translate_px": 2, "tta": "flip_translate"}

# airbench94_muon's optimizer for a summed loss, turned into a mean loss at batch 1024: head lr
# 0.67*1024 = 686, bias lr 0.053*1024 = 54.3 (= 686 * 0.0791), decay 2e-6*1024 per step; linear decay to 0
_MUON = {"optim.name": "muon", "optim.muon_lr": 0.24, "optim.muon_momentum": 0.6,
         "optim.lr": 686.0, "optim.momentum": 0.85, "optim.weight_decay": 2.985e-6,
         "optim.bias_lr_scale": 0.0791, "optim.decay_bias": True,
         "schedule.name": "onecycle", "schedule.warmup_epochs": 0, "schedule.final_lr_fraction": 0.0}

_BASE_RECIPES = [
    Recipe("auto", "what `cifarlab train --data X` picks with no recipe, config or model= given: chosen from the "
           "data (image count, size, colour) by measured rules; --print-config shows the choice and why", {}),
    Recipe("default", "cifarlab's plain key defaults: ResNet-18, SGD+Nesterov with warmup and linear decay, "
           "flip + 2px translate, label smoothing 0.1 (slow on a CPU)", {}),
    Recipe("resnet18-cifar", "ResNet-18 for 30 epochs: the classic strong baseline on CIFAR-10 (slow on a CPU)",
           dotted_to_nested({"epochs": 30, "batch_size": 256, "optim.lr": 0.2, "schedule.warmup_epochs": 2,
                             "augment.translate_px": 4, "label_smoothing": 0.1, "tta": "flip"})),
    Recipe("fast",
           "Speed-run: fastnet (whitened stem, dirac init, no-scale BN), Muon on conv filters + Nesterov SGD, "
           "linear lr decay, label smoothing 0.2, alternating flip + 2px translate, flip+translate TTA, "
           "7 epochs: 2 at 16 px, 2 at 24 px, 3 at 32 px, the stem's bias frozen after 3, batch norm over "
           "256-image micro-batches of each 1024-image step",
           dotted_to_nested({
               **_SPEEDRUN, **_MUON, "epochs": 7,
               # ghost batch norm (Hoffer et al. 2017) for free: 4 forward/backward passes of 256 images per
               # optimizer step keep the step at 1024 images (so the Muon settings hold) while batch norm
               # normalises each 256 (docs/RESULTS.md: +0.2 points over 3 seeds at the same speed)
               "batch_size": 256, "accumulate_steps": 4,
               # the stem's bias trains 3 epochs then freezes (as airbench): later steps skip backward into it
               "model_args": {"head_scale": 1 / 256, "head_init": "unit", "whiten_bias_epochs": 3},
               # progressive resizing: a 16 px epoch costs ~1/4 and a 24 px one ~1/2 of a 32 px one
               "augment.low_res_px": 24, "augment.low_res_epochs": 4, "augment.min_res_px": 16,
               "augment.min_res_epochs": 2,
           })),
    Recipe("fast-fmnist",
           "The speed-run for 28x28 grey images (Fashion-MNIST, MNIST): fast's fastnet at widths 32/64/64 and "
           "Muon, 6 epochs (the first 2 at 20 px), alternating flip + 2px translate, flip+translate TTA "
           "(Fashion-MNIST: 93.3% test in under 5 minutes on 2 CPU cores without bf16)",
           dotted_to_nested({
               **_SPEEDRUN, **_MUON, "data.spec": "fashion-mnist", "epochs": 6,
               "batch_size": 256, "accumulate_steps": 4,  # as fast: batch norm over 256, steps of 1024
               # a quarter of fast's widths: in fp32 on 2 cores the full widths would leave time for under one
               # epoch of 60,000 images in 5 minutes; 6 epochs of the narrow net reach 93% (docs/RESULTS.md: 7 gain
               # 0.1 point but ran past 5 minutes on a slower day of the shared machine)
               "model_args": {"head_scale": 1 / 256, "head_init": "unit", "whiten_bias_epochs": 3,
                              "widths": [32, 64, 64]},
               "augment.low_res_px": 20, "augment.low_res_epochs": 2,
           })),
    Recipe("mixconv-fast",
           "Dynamic convolutions at speed-run cost: mixfastnet (fastnet whose last conv mixes 4 expert kernels "
           "per sample), the fast recipe's Muon, 10 epochs (first 4 at 24 px)",
           dotted_to_nested({
               **_SPEEDRUN, **_MUON, "model": "mixfastnet", "epochs": 10,
               # mixing only the last group's second conv keeps the extra cost small (mixing more groups costs more)
               "model_args": {"head_scale": 1 / 256, "head_init": "unit", "k": 4, "mix_groups": [2]},
               "augment.low_res_px": 24, "augment.low_res_epochs": 4,
               "optim.router_lr": 0.05,  # the routers are tiny linear layers: an ordinary lr, not the head's
           })),
    Recipe("fast-sgd",
           "The speed-run with airbench94's optimizer: Nesterov SGD, triangular lr, bias lr x64, 8 epochs "
           "(slower and less accurate than fast on a CPU; kept for comparison)",
           dotted_to_nested({
               **_SPEEDRUN, "epochs": 8,
               # airbench94's decoupled hyperparameters turned into a mean-loss SGD: lr 11.5 per 1024 images
               # / (1 + 1/(1-0.85)) * 1024 = 1.5; weight decay 0.0153*1024/7851 per step / lr = 1.33e-3
               "optim.name": "sgd", "optim.lr": 1.5, "optim.momentum": 0.85, "optim.nesterov": True,
               "optim.weight_decay": 1.33e-3, "optim.bias_lr_scale": 64.0, "optim.decay_bias": True,
               "schedule.name": "onecycle", "schedule.warmup_epochs": 0.23 * 8, "schedule.warmup_start": 0.2,
               "schedule.final_lr_fraction": 0.07,
           })),
]

# ---- the seed reports, setting by setting (shared/seeds/NNN_*.txt)
_MIXING_UNSTATED = "model_args.mixing says how its K mixing weights are formed"


def _softmax_mixing(measured: str) -> Setting:
    """The reports have a linear layer predict the K weights and name no activation for them."""
    return unstated("model_args.mixing", "softmax", "the report names no activation for the K weights; raw outputs "
                    "(model_args.mixing=linear, the coursework's text: 'a fully connected layer that outputs the "
                    "vector a') train slower than a softmax, same seed and data: " + measured + " (docs/RESULTS.md)")


_MIXING_001 = ("seed001's train accuracy in epochs 1-3 32.4/42.0/47.8% raw vs 35.8/51.5/60.5%, and the softmax "
               "run trained as the report did (93.26% at epoch 14; H200: 94.5% at epoch 13)")
_MIXING_002 = ("seed002's held-out accuracy in epochs 1-5 29.6/42.3/48.4/51.5/54.8% raw vs 40.8/52.4/54.6/56.3/57.2%, "
               "train 55.7% vs 60.6% at epoch 5")


def _timed_form() -> Setting:
    """How the mix-conv layers compute, not what: every form is the same function (tested in float64)."""
    return unstated("model_args.form", "timed", "how each mix-conv layer is computed, not what: its first batch "
                    "times the exact forms (grouped conv, wide conv, per-sample matmuls) on this machine and keeps "
                    "the fastest, remembered in ~/.cache/cifarlab; 1.01-1.21x the fixed rules on an AMD EPYC in fp32 "
                    "(docs/RESULTS.md); results differ from another form in rounding only")


def _course_eval_mode() -> Setting:
    """Reports 001 and 004 scored with the course's my_utils.evaluate_accuracy."""
    return unstated("eval_bn_stats", "running", "it scored with evaluate_accuracy from the course's my_utils.py "
                    "(not shown): d2l's helper of that name switches to eval mode")


_SEED_RECIPES = [
    _seed_recipe(
        "seed000",
        "Report 000 (89.66% val, CIFAR-10): mixconv000 (7 blocks, PReLU), RandomResizedCrop + rotation 15 + flip, "
        "norm 0.5/0.5, batch 64, label smoothing, RMSprop 1e-3, cosine T_max 100, 40 epochs",
        [
            report("data.spec", "cifar10", "Final model accuracy on the CIFAR10 Validation Set"),
            report("data.normalize", "fixed", "Normalize images by subtracting the mean (0.5) and dividing by "
                   "the standard deviation (0.5) for each color channel"),
            report("data.mean", (0.5,), "subtracting the mean (0.5)"),
            report("data.std", (0.5,), "dividing by the standard deviation (0.5)"),
            report("augment.resized_crop", True, "RandomResizedCrop: Randomly crop and resize images with padding",
                   "RandomResizedCrop takes no padding: its torchvision defaults below are our reading"),
            unstated("augment.resized_crop_scale", (0.08, 1.0), "torchvision's RandomResizedCrop default"),
            report("augment.rotation_deg", 15.0, "RandomRotation: Randomly rotate images up to 15 degrees"),
            report("augment.flip", 0.5, "With a 50% chance, the images are horizontally flipped"),
            unstated("augment.translate_px", 0, "no other augmentation is listed"),
            report("model", "mixconv000", "The backbone is a sequence of 7 blocks, each of which consists of "
                   "convolutional layers, batch normalization, and a PReLU activation function", _MIXING_UNSTATED),
            _softmax_mixing("not measured on 000 itself, but on the same course's layer in 001 and 002: "
                            + _MIXING_001 + "; " + _MIXING_002),
            _timed_form(),
            unstated("model_args.widths", (64, 128, 128, 256, 256, 512, 512), "the report gives no widths; it says "
                     "the channels grow where a block max-pools (every other block): ours double there"),
            unstated("model_args.residual", False, "the report calls the model 'ResNet-based' but describes no "
                     "skip connection in its blocks; model_args.residual=true adds them"),
            report("batch_size", 64, "with a batch size of 64"),
            unstated("accumulate_steps", 2, "the report accumulates gradients over num_accumulation_steps "
                     "mini-batches but never gives the number"),
            report("label_smoothing_to", "others", "The weight values for the target class and non-target classes "
                   "are calculated based on the smoothing value and the number of classes",
                   "its own loss: 1-s on the target, s/(C-1) on each other class (PyTorch's puts s/C on all)"),
            unstated("label_smoothing", 0.2, "the value is not given; its final train loss 1.0249 at 96.66% train "
                     "accuracy rules out 0.1 (this loss cannot go below 0.545 with s=0.1) and fits 0.2 (floor 0.940)"),
            report("optim.name", "rmsprop", "RMSprop optimizer is used to optimize the model parameters"),
            report("optim.lr", 1e-3, "The learning rate is set to 0.001"),
            report("optim.alpha", 0.99, "alpha to 0.99"),
            report("optim.eps", 1e-8, "eps to 1e-08"),
            report("optim.weight_decay", 0.0, "weight_decay to 0"),
            report("optim.momentum", 0.9, "and momentum to 0.9"),
            report("schedule.name", "cosine", "A learning rate scheduler defined with cosine annealing"),
            report("schedule.t_max_epochs", 100, "over T_max (100 in this case) epochs",
                   "longer than the 40-epoch run, so the lr only falls to ~65% of its peak"),
            report("schedule.eta_min", 1e-6, "eta_min (1e-6 in this case)"),
            report("schedule.per_epoch", True, "update the learning rate scheduler using the scheduler.step() "
                   "method", "once per epoch, in the epoch loop"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            report("epochs", 40, "train and validate the model for 40 epochs"),
            report("eval_bn_stats", "running", "It sets the model to evaluation mode"),
            *_pytorch_defaults(weight_decay=False),
        ],
        ReportedResult("validation accuracy (final epoch)", 0.8966, 40, "000", "CIFAR-10 test split",
                       "train accuracy 96.66%, train loss 1.0249, validation loss 1.1479",
                       points=((40, 0.9666, 0.8966),)),
    ),
    _seed_recipe(
        "seed001",
        "Report 001 (85.22% best / 83.67% final test, CIFAR-10): mixconv001 (11 blocks, LeakyReLU, 1x1 shortcuts, "
        "kaiming normal on linear layers), no augmentation, batch 256, cross-entropy, Adam 1e-3 wd 5e-4, 25 epochs",
        [
            report("data.spec", "cifar10", "CIFAR-10 dataset which is a collection of images"),
            unstated("data.normalize", "none", "no normalisation is mentioned: pixels in [0, 1] as ToTensor gives"),
            unstated("augment.flip", 0.0, "no augmentation is mentioned"),
            unstated("augment.translate_px", 0, "no augmentation is mentioned"),
            report("model", "mixconv001", "Backbone consist of 11 blocks",
                   "identity skips where channels match are our reading of its 1x1-conv shortcut; its classifier "
                   "'with a softmax activation' feeds CrossEntropyLoss, which applies softmax itself: we apply it "
                   "once, in the loss; " + _MIXING_UNSTATED),
            _softmax_mixing(_MIXING_001),
            _timed_form(),
            unstated("model_args.widths", (32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256), "the report gives "
                     "no widths; ours double after each of its max-pools (every third block)"),
            unstated("model_args.negative_slope", 0.01, "PyTorch's nn.LeakyReLU default: the report names no slope "
                     "(before 2026-12-01 this recipe used 0.1, unflagged)"),
            unstated("model_args.init", "default", "the model's own init is turned off so that `init` below "
                     "touches only the linear layers, as the report says"),
            report("init", "kaiming_normal", "For initializing the weights of the linear layers in the model, "
                   "kaming_normal_ algorithm has been used"),
            report("init_layers", "linear", "the weights of the linear layers"),
            report("batch_size", 256, "the model was trained using a batch size of 256",
                   "its data-loading section says 100; the training section's 256 is the one it reports results for"),
            report("label_smoothing", 0.0, "the CrossEntropyLoss (Log Loss) function was used"),
            report("optim.name", "adam", "The Adam optimizer was utilized"),
            report("optim.lr", 1e-3, "with a learning rate of 0.001"),
            report("optim.weight_decay", 5e-4, "a weight decay of 0.0005"),
            unstated("schedule.name", "constant", "no scheduler is mentioned"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            _course_eval_mode(),
            report("epochs", 25, "total 25 epoches have been used for training the model"),
            *_pytorch_defaults(weight_decay=True),
        ],
        ReportedResult("test accuracy (best epoch)", 0.8522, 14, "001", "CIFAR-10 test split",
                       "final (epoch 25) 83.67%; train accuracy 96.57%, train loss 0.100",
                       points=((14, 0.93264, 0.8522), (25, 0.96574, 0.8367))),
    ),
    _seed_recipe(
        "seed002",
        "Report 002 (92.38% val, CIFAR-10): mixconv002 (residual, ReLU), RandomAffine + ColorJitter, norm 0.5/0.5, "
        "batch 75, cross-entropy, Adam 1e-3 + cosine, 50 epochs",
        [
            report("data.spec", "cifar10", "CIFAR 10 Dataset"),
            report("data.normalize", "fixed", "transforms.Normalize() function"),
            report("data.mean", (0.5,), "subtracting the mean of 0.5"),
            report("data.std", (0.5,), "dividing the standard deviation also 0.5"),
            report("augment.normalize_first", True, "transforms.Normalize() function: To normalize the tensors",
                   "its list normalises, then RandomAffine and ColorJitter, then normalises again; test images "
                   "are normalised once"),
            unstated("augment.flip", 0.0, "only RandomAffine and ColorJitter are listed"),
            unstated("augment.translate_px", 0, "only RandomAffine and ColorJitter are listed"),
            unstated("augment.rotation_deg", 10.0, "RandomAffine ranges are not given: torchvision-typical values"),
            unstated("augment.affine_translate", 0.1, "RandomAffine ranges are not given"),
            unstated("augment.affine_scale", (0.9, 1.1), "RandomAffine ranges are not given"),
            unstated("augment.brightness", 0.2, "ColorJitter ranges are not given"),
            unstated("augment.contrast", 0.2, "ColorJitter ranges are not given"),
            unstated("augment.saturation", 0.2, "ColorJitter ranges are not given"),
            unstated("augment.hue", 0.1, "ColorJitter ranges are not given"),
            report("model", "mixconv002", "K- Convolutional Layers", _MIXING_UNSTATED),
            _softmax_mixing(_MIXING_002),
            _timed_form(),
            unstated("model_args.widths", (64, 64, 128, 128, 256, 256), "the report gives no widths; ours double "
                     "after each max-pool (every other block)"),
            report("batch_size", 75, "Training Dataloader: 75"),
            unstated("accumulate_steps", 1, "its training_epoch() takes 'Accumulation Steps' but the report never "
                     "gives the number; its printed training loss points to none: 0.0087 at 77.17% training "
                     "accuracy (epoch 5) is a mean cross-entropy of 0.65 if batch means of 75 images were summed "
                     "and divided by the image count, beside a validation loss of 0.64 at 78.34% (0.045 at "
                     "98.38% by epoch 50); a loss divided by N accumulation steps first would put it at 0.65*N"),
            report("eval_batch_size", 50, "Test Dataloader: 50"),
            unstated("eval_bn_stats", "batch", "its validation_epoch is described step by step (torch.no_grad(), "
                     "the loop, the loss, the counters) with no model.eval(), where report 000's says it sets "
                     "evaluation mode: a PyTorch model stays in training mode, so batch norm normalised each test "
                     "batch of 50 by its own statistics"),
            report("label_smoothing", 0.0, "Loss Function: CrossEntropyLoss()"),
            report("optim.name", "adam", "Optimizer: Adam"),
            report("optim.lr", 1e-3, "Learning Rate: 0.001"),
            unstated("optim.weight_decay", 0.0, "no weight decay is mentioned (Adam's default)"),
            report("schedule.name", "cosine", "Learning Rate Scheduler: CosineAnnealingLR"),
            unstated("schedule.t_max_epochs", 0, "T_max is not given: the run's 50 epochs"),
            unstated("schedule.per_epoch", True, "CosineAnnealingLR's usual use: one step per epoch"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            report("epochs", 50, "epochs: 50"),
            *_pytorch_defaults(weight_decay=False),
        ],
        ReportedResult("validation accuracy (final epoch)", 0.9238, 50, "002", "CIFAR-10 test split",
                       "78.34% at epoch 5, 86.30% at 10, 89.57% at 20, 91.28% at 30, 92.01% at 40",
                       points=((5, 0.7717, 0.7834), (10, 0.8463, 0.8630), (15, 0.8840, 0.8856),
                               (20, 0.9116, 0.8957), (25, 0.9337, 0.9053), (30, 0.9532, 0.9128),
                               (35, 0.9686, 0.9125), (40, 0.9774, 0.9201), (45, 0.9816, 0.9229),
                               (50, 0.9838, 0.9238))),
    ),
    _seed_recipe(
        "seed003",
        "Report 003 part 1 (65% val, 62.6% Kaggle, CIFAR-100): basenet (BN, residual x0.1), dataset mean/std, "
        "flip + random crop, 100 epochs",
        [
            report("data.spec", "cifar100", "Improving BaseNet on CIFAR100"),
            report("data.normalize", "dataset", "calculated the standard deviation and mean values of the images "
                   "in each channel"),
            report("augment.flip", 0.5, "like Horizontal Flip and Random Crop"),
            report("augment.translate_px", 4, "Random Crop", "the padding is not given: 4 px, the usual CIFAR crop"),
            unstated("augment.translate_pad", "zeros", "RandomCrop pads with zeros by default"),
            report("model", "basenet", "ResBlock * 3"),
            report("model_args.batch_norm", True, "I added a BatchNorm layer after the Conv layer"),
            report("model_args.residual", True, "adding a residual connection"),
            report("model_args.residual_scale", 0.1, "x = 0.1*x + residual"),
            unstated("batch_size", 128, "the batch size is not given"),
            unstated("label_smoothing", 0.0, "no loss is named: plain cross-entropy"),
            unstated("optim.name", "adam", "the optimizer is not given"),
            unstated("optim.lr", 1e-3, "the learning rate is not given: Adam's default"),
            unstated("optim.weight_decay", 0.0, "no weight decay is mentioned"),
            unstated("schedule.name", "constant", "no scheduler is mentioned"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            report("epochs", 100, "increased the number of epochs to 100"),
            *_pytorch_defaults(weight_decay=False),
        ],
        ReportedResult("validation accuracy (final epoch)", 0.65, 100, "003", "CIFAR-100 (its own split)",
                       "Kaggle test accuracy 62.6%", points=((100, None, 0.65),)),
        ladder=SEED003_LADDER, ladder_base="seed003-steps",
    ),
    _seed_recipe(
        "seed003-steps",
        "Report 003's starting point (23% val, CIFAR-100): the course's starter BaseNet (conv 6 and 16, 5x5, "
        "pool after each, linear 50); `cifarlab ablate --recipe seed003 --ladder` replays the report's 10 steps on it",
        [
            report("data.spec", "cifar100", "Improving BaseNet on CIFAR100"),
            unstated("data.normalize", "fixed", "the course's starter normalises to [-1, 1]; the report's step 8 "
                     "moves to the data set's own statistics"),
            unstated("data.mean", (0.5,), "the starter's [-1, 1] normalisation"),
            unstated("data.std", (0.5,), "the starter's [-1, 1] normalisation"),
            unstated("augment.flip", 0.0, "augmentation arrives at step 9"),
            unstated("augment.translate_px", 0, "augmentation arrives at step 9"),
            report("model", "basenet_steps", "In the initial code",
                   "the course's starter BaseNet (PyTorch's CIFAR tutorial net with a 50-unit hidden layer), "
                   "which the report does not print"),
            unstated("batch_size", 128, "the batch size is not given (as seed003)"),
            unstated("label_smoothing", 0.0, "no loss is named: plain cross-entropy"),
            unstated("optim.name", "adam", "the optimizer is not given (as seed003)"),
            unstated("optim.lr", 1e-3, "the learning rate is not given (as seed003)"),
            unstated("optim.weight_decay", 0.0, "no weight decay is mentioned"),
            unstated("schedule.name", "constant", "no scheduler is mentioned"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            unstated("epochs", 30, "the epochs before step 10 (100 epochs) are not given"),
            *_pytorch_defaults(weight_decay=False),
        ],
        ReportedResult("validation accuracy", 0.23, None, "003", "CIFAR-100 (its own split)",
                       "before any of the report's changes"),
    ),
    _seed_recipe(
        "seed003-transfer",
        "Report 003 part 2 (56.31% test): torchvision ResNet, full fine-tuning, upsampled input, "
        "RandomResizedCrop + flip, lr 5e-4, batch 32, 30 epochs (needs model_args.pretrained=PATH)",
        [
            unstated("data.spec", "cifar100", "the report never names the data set of part 2: CIFAR-100 is our "
                     "assumption from part 1"),
            report("data.normalize", "dataset", "as in the previous part, I took the whole dataset and calculated "
                   "the standard deviation and mean values"),
            report("augment.resized_crop", True, "Random Resized Crop"),
            report("augment.flip", 0.5, "Random Horizontal Flip"),
            unstated("augment.translate_px", 0, "no other augmentation is listed"),
            unstated("model", "transfer_resnet18", "'the original ResNet': its depth is not given"),
            report("model_args.finetune", "full", "let the \"whole\" model to train"),
            report("model_args.input_policy", "upsample", "Resize: Resizes the images to a particular shape",
                   "the size is not given: 224 px, what ImageNet weights expect"),
            report("batch_size", 32, "Batch Size was set to 32"),
            report("optim.lr", 5e-4, "changed the Learning rate to 0.0005"),
            unstated("optim.name", "adam", "the optimizer is not given"),
            unstated("optim.weight_decay", 0.0, "no weight decay is mentioned"),
            unstated("label_smoothing", 0.0, "no loss is named: plain cross-entropy"),
            unstated("schedule.name", "constant", "no scheduler is mentioned"),
            unstated("schedule.warmup_epochs", 0, "no warmup is mentioned"),
            report("epochs", 30, "changed the Number of Epochs to 30"),
            *_pytorch_defaults(weight_decay=False),
        ],
        ReportedResult("test accuracy (final epoch)", 0.5631, 30, "003", "unnamed in the report",
                       "head-only fine-tuning: 36.04%",
                       points=tuple((e, acc, 0.5631 if e == 30 else None) for e, acc in enumerate(
                           (0.0067, 0.0323, 0.1130, 0.2143, 0.3230, 0.4113, 0.4743, 0.5310, 0.5797, 0.6233,
                            0.6753, 0.7060, 0.7293, 0.7420, 0.7730, 0.7990, 0.8067, 0.8327, 0.8427, 0.8560,
                            0.8693, 0.8850, 0.8833, 0.8890, 0.9070, 0.9150, 0.9260, 0.9290, 0.9343, 0.9457),
                           start=1))),
        requires=(("model_args.pretrained", "this recipe fine-tunes ImageNet weights; pass "
                   "model_args.pretrained=PATH to a torchvision resnet18 state dict (.pth), or it would "
                   "train from scratch"),),
    ),
    _seed_recipe(
        "seed004",
        "Report 004 (90.05% best / 89.88% final test, Fashion-MNIST): patchmlp (4x4 patches), batch 128, "
        "kaiming uniform, cross-entropy, Adam 1e-3 wd 5e-4, ReduceLROnPlateau (patience 15, 1e-8) on test loss "
        "read as the report saw it act (one lr cut, after epoch 17), dropout after each hidden ReLU, 30 epochs",
        [
            report("data.spec", "fashion-mnist", "MNIST Fashion dataset"),
            report("data.normalize", "fixed", "transform our data set to tensors and normalize the same"),
            unstated("data.mean", (0.5,), "the normalisation values are not given"),
            unstated("data.std", (0.5,), "the normalisation values are not given"),
            unstated("augment.flip", 0.0, "no augmentation is mentioned"),
            unstated("augment.translate_px", 0, "no augmentation is mentioned"),
            report("model", "patchmlp", "Linear(in_features=16, out_features=256, bias=True)",
                   "its printed module list and shape table"),
            unstated("model_args.head_pool", "mean", "the classifier gives (128, 10) per image; how those 128 rows "
                     "become one prediction is not said"),
            report("model_args.norm_relu", False, "Block 1 Layer 4 (128,64) (256,64) Batch Normalization (256) "
                   "TRANSPOSE", "its shape table lists a ReLU after layers 1 and 3 of each block and none after "
                   "the batch norms (cifarlab's patchmlp has one there by default)"),
            unstated("model_args.dropout_at", "hidden", "the module list has one ReLU and one Dropout per block "
                     "(0.1, 0.2) and the table shows no dropout: here each acts right after the ReLUs inside its "
                     "block's two MLPs, as another notebook of the course wrote it, the reading under which the "
                     "report's 90.05% was reached (docs/RESULTS.md); dropout_at=block, after each block's batch "
                     "norm, is the other"),
            report("init", "kaiming_uniform", "kaiming_uniform_ initialization",
                   "biases set to zero (unstated)"),
            report("batch_size", 128, "with a batch size of 128"),
            report("label_smoothing", 0.0, "The loss function that we have used is the Cross Entropy Loss"),
            report("optim.name", "adam", "Adam optimizer is used with a learning rate of 0.001"),
            report("optim.lr", 1e-3, "learning rate of 0.001"),
            report("optim.weight_decay", 5e-4, "we have set the weight_decay to 0.0005"),
            report("schedule.name", "plateau", "The scheduler that we have used is ReduceLROnPlateau"),
            report("schedule.plateau_monitor", "val_loss", "I monitor the test loss",
                   "the official test split is the validation split of --data fashion-mnist"),
            deviation("schedule.plateau_mode", "max", _PLATEAU_MAX_WHY),
            report("schedule.plateau_patience", 15, "patience parameter for our scheduler as 15"),
            report("schedule.plateau_threshold", 1e-8, "the threshold parameter to 1e-8"),
            _course_eval_mode(),
            report("epochs", 30, "The number of epochs used to train our neural network are 30"),
            *_pytorch_defaults(weight_decay=True),
        ],
        ReportedResult("test accuracy (best epoch)", 0.9005, 24, "004", "Fashion-MNIST test split",
                       "final (epoch 30) 89.88%", points=((24, None, 0.9005), (30, None, 0.8988))),
    ),
]



def _add_variant(base_name: str, name: str, description: str, replaced: list[Setting], drop: str = "") -> None:
    """A seed recipe that changes a few rows of another, listed right after it: every row not replaced (nor
    under the key prefix `drop`) is the base's, so the two stay in step when the base changes."""
    base = next(r for r in _SEED_RECIPES if r.name == base_name)
    gone = {st.key for st in replaced}
    kept = [st for st in base.settings if st.key not in gone and not (drop and st.key.startswith(drop))]
    _SEED_RECIPES.insert(_SEED_RECIPES.index(base) + 1, _seed_recipe(name, description, kept + replaced, base.reported))


_add_variant(
    "seed004", "seed004-min",
    "Report 004's recipe with the scheduler's mode as the report names it (min): the lr cut then waits for 15 "
    "epochs without a new lowest test loss, after epoch 27 or never within 30 in our runs",
    [report("schedule.plateau_mode", "min", "set the mode of the scheduler as min")])
_add_variant(
    "seed002", "seed002-onenorm",
    "Report 002's recipe with one normalisation after the colour jitter instead of its normalise, affine, "
    "jitter, normalise order",
    [deviation("augment.normalize_first", False,
               "the report's order has the jitter clamp normalised images to [0, 1] (torchvision's does on float "
               "tensors), flattening every pixel darker than mid-grey to one value, in training images only: "
               "with it seed002 trailed the report by 21 points at epoch 5 (57.2% held-out vs 78.34%), with one "
               "normalisation by 9 (69.2%), same seed and data (docs/RESULTS.md)")])


RECIPES: dict[str, Recipe] = {r.name: r for r in _BASE_RECIPES + _SEED_RECIPES}


def recipe_names() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}'; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def resolve_config(recipe: str | None = None, config_file: str | None = None, data: str | None = None,
                   overrides: dict | None = None, auto: bool = False, reasons: list | None = None) -> Config:
    """Defaults < recipe < YAML file < data spec < overrides (a nested dict).

    auto=True (the CLI's and train()'s behaviour) lets the data choose the settings (auto.py) when no
    recipe, config file or model= was given; recipe="auto" asks for that explicitly. The rules' reasons
    are appended to `reasons`."""
    overrides = overrides or {}
    if recipe == AUTO or (auto and recipe is None and not config_file and "model" not in overrides):
        recipe, chosen = _auto_choice(data, overrides, reasons)
        overrides = merge(chosen, overrides)
    values: dict = {}
    if recipe is not None:
        values = merge({"recipe": recipe}, get_recipe(recipe).overrides)
    if config_file:
        values = merge(values, load_yaml(config_file))
    if data is not None:
        values = merge(values, {"data": {"spec": data}})
    if overrides:
        values = merge(values, overrides)
    return from_dict(values)


def _auto_choice(data: str | None, overrides: dict, reasons: list | None) -> tuple[str, dict]:
    """(recipe, nested overrides) the data calls for; the rules' lines go to `reasons`."""
    from .auto import choose, profile_data

    probe = merge({"data": {"spec": data}} if data is not None else {}, {"data": overrides.get("data", {})})
    cfg = from_dict(probe)  # the data keys as given (spec, root, image_size, channels, val_fraction)
    choice = choose(profile_data(cfg.data))
    if reasons is not None:
        reasons.extend(choice.reasons)
    recipe = choice.recipe if not choice.overrides else AUTO
    chosen = dotted_to_nested(choice.overrides)
    if recipe == AUTO:  # the rules build on fast's settings; the run records "auto"
        chosen = merge(get_recipe(choice.recipe).overrides, chosen)
    return recipe, chosen


def check_requirements(cfg: Config) -> None:
    """Refuse to train a config whose recipe needs a key the user has not set (one line saying which and why)."""
    recipe = RECIPES.get(cfg.recipe)
    for key, why in recipe.requires if recipe else ():
        section, _, name = key.partition(".")
        value = cfg.model_args.get(name) if section == "model_args" else getattr(cfg, key, None)
        if not value:
            raise UserError(f"recipe {recipe.name} needs {key}: {why}")


def reported_result(cfg: Config) -> ReportedResult | None:
    """The seed report's number for a config that started from a seed recipe."""
    return recipe_reported(cfg.recipe)


def recipe_reported(name: str | None) -> ReportedResult | None:
    """What the report behind recipe `name` states (a run folder's config or summary names its recipe)."""
    recipe = RECIPES.get(name or "")
    return recipe.reported if recipe else None


def measured_like_reported(reported: dict, summary: dict, running_bn: bool = False) -> tuple[float | None, int | None]:
    """The run's number that matches what a report states: its best epoch's accuracy for a 'best epoch'
    result, else its last epoch's (no TTA: none of the reports used any). running_bn: the same, scored with
    the running batch-norm statistics of a bn_recalibrate run."""
    suffix = "_running_bn" if running_bn else ""
    if "best" in reported.get("metric", ""):
        return summary.get(f"best_val_acc{suffix}"), summary.get(f"best_epoch{suffix}")
    return summary.get(f"final_val_acc{suffix}"), summary.get("epochs")


def reported_line(summary: dict) -> str | None:
    """'report 004: test accuracy (best epoch) 90.05% at epoch 24; this run: 90.31% at epoch 22'."""
    rep = summary.get("reported")
    if not rep:
        return None
    value, epoch = measured_like_reported(rep, summary)
    at = f" at epoch {rep['epoch']}" if rep.get("epoch") else ""
    ours = f"{value:.2%} at epoch {epoch}" if value is not None else "n/a"
    running, running_epoch = measured_like_reported(rep, summary, running_bn=True)
    if running is not None:  # bn_recalibrate: both ways of scoring, the usual one first
        ours = f"{running:.2%} at epoch {running_epoch} (running BN statistics), {ours} (precise BN)"
    return f"report {rep['report']}: {rep['metric']} {rep['value']:.2%}{at} on {rep['data']}; this run: {ours}"


def provenance_table(name: str, width: int = 110) -> str:
    """A recipe as rows of key, value, source and the report's words or our reason."""
    import textwrap

    r = get_recipe(name)
    lines = [f"{r.name}: {r.description}"]
    if r.name == AUTO:
        from .auto import describe_rules

        return "\n".join(lines + describe_rules())
    if r.reported:
        rep = r.reported
        at = f" at epoch {rep.epoch}" if rep.epoch else ""
        lines.append(f"report {rep.report} states: {rep.metric} {rep.value:.2%}{at} on {rep.data}"
                     + (f" ({rep.note})" if rep.note else ""))
    if not r.settings:
        flat = nested_to_dotted(r.overrides)
        lines.append("settings (not from a report):")
        lines += [f"  {k:30} {v!r}" for k, v in flat.items()] or ["  (the defaults: cifarlab train --list-keys)"]
        return "\n".join(lines)
    lines.append(f"{'setting':30} {'value':18} {'source':10} words or reason")
    for s in r.settings:
        text = (f"\"{s.words}\"" if s.words else "") + (f" — {s.why}" if s.words and s.why else s.why)
        wrapped = textwrap.wrap(text, max(30, width - 61)) or [""]
        # a long list value breaks after its commas so that it stays in its column
        shown = format_value(s.value)
        values = ([v.replace(", ", ",") for v in textwrap.wrap(shown.replace(",", ", "), 18)]
                  if isinstance(s.value, (list, tuple)) else [shown])
        for i in range(max(len(wrapped), len(values))):
            key, source = (s.key, s.source) if i == 0 else ("", "")
            value, words = values[i] if i < len(values) else "", wrapped[i] if i < len(wrapped) else ""
            lines.append(f"{key:30} {value:18} {source:10} {words}".rstrip())
    for key, why in r.requires:
        lines.append(f"{key:30} {'(you set it)':18} {'required':10} {why}")
    lines.append(f"every other key: cifarlab's default (cifarlab train --recipe {r.name} --print-config shows them all)")
    if r.ladder:
        lines.append(f"\nthe report's ablation steps, each on top of the last, from recipe {r.ladder_base} "
                     f"(cifarlab ablate --recipe {r.name} --ladder):")
        # ladder_configs lists the base first, then one entry per rung in the ladder's order
        for (name, _, own, reported), rung in zip(ladder_configs(r), (None, *r.ladder)):
            said = f"{reported:.0%}" if reported is not None else "-"
            change = ", ".join(f"{k}={format_value(v)}" for k, v in own.items()) or "(the base recipe)"
            lines.append(f"  {name:30} report: {said:5} {change}")
            if rung is not None and rung.why:
                lines += [f"{'':41}{w}" for w in textwrap.wrap(f"(ours: {rung.why})", max(30, width - 41))]
    return "\n".join(lines)

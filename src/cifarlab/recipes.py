"""Named configurations: data, not code.

Each recipe is a description plus a nested dict of overrides on the defaults in
config.py: the speed-run recipe, one recipe per seed report (marking what a report
left unstated) and a few baselines.
Never holds logic; `resolve_config` applies recipe < config file < --data < key=value.
"""

from __future__ import annotations

from .config import Config, dotted_to_nested, from_dict, load_yaml, merge
from .errors import UserError

# what both speed-run recipes share: fastnet, big batches, label smoothing 0.2, alternating
# flip + 2 px translate, flip+translate TTA
_SPEEDRUN = {"model": "fastnet", "batch_size": 1024, "eval_batch_size": 2000, "label_smoothing": 0.2,
             "augment.flip_mode": "alternate", "augment.translate_px": 2, "tta": "flip_translate"}

# airbench94_muon's optimizer for a summed loss, turned into a mean loss at batch 1024: head lr
# 0.67*1024 = 686, bias lr 0.053*1024 = 54.3 (= 686 * 0.0791), decay 2e-6*1024 per step; linear decay to 0
_MUON = {"optim.name": "muon", "optim.muon_lr": 0.24, "optim.muon_momentum": 0.6,
         "optim.lr": 686.0, "optim.momentum": 0.85, "optim.weight_decay": 2.985e-6,
         "optim.bias_lr_scale": 0.0791, "optim.decay_bias": True,
         "schedule.name": "onecycle", "schedule.warmup_epochs": 0, "schedule.final_lr_fraction": 0.0}

RECIPES: dict[str, tuple[str, dict]] = {
    "default": (
        "ResNet-18, SGD+Nesterov with warmup and linear decay, flip + 2px translate, label smoothing 0.1",
        {},
    ),
    "resnet18-cifar": (
        "ResNet-18 for 30 epochs: the classic strong baseline on CIFAR-10 (slow on CPU: ~8 min/epoch on 2 cores)",
        dotted_to_nested({"epochs": 30, "batch_size": 256, "optim.lr": 0.2, "schedule.warmup_epochs": 2,
                          "augment.translate_px": 4, "label_smoothing": 0.1, "tta": "flip"}),
    ),
    "fast": (
        "Speed-run: fastnet (whitened stem, dirac init, no-scale BN), Muon on conv filters + Nesterov SGD, "
        "linear lr decay, label smoothing 0.2, alternating flip + 2px translate, flip+translate TTA, "
        "7 epochs: 2 at 16 px, 2 at 24 px, 3 at 32 px, the stem's bias frozen after 3, batch norm over "
        "256-image micro-batches of each 1024-image step",
        dotted_to_nested({
            **_SPEEDRUN, **_MUON, "epochs": 7,
            # ghost batch norm (Hoffer et al. 2017) for free: 4 forward/backward passes of 256 images per optimizer
            # step keep the step at 1024 images (so the Muon settings hold) while batch norm normalises each 256.
            # 3 seeds, val plain / with TTA: 88.60 / 89.69% mean vs 88.11 / 89.48% with one 1024-image pass
            "batch_size": 256, "accumulate_steps": 4,
            # the stem's bias trains 3 epochs then freezes (as airbench): later steps skip backward into the stem,
            # 465 -> 504 img/s at 32 px here; seed 0: 89.46% val with TTA in 429 s of training (89.68% in 502 s before)
            "model_args": {"head_scale": 1 / 256, "head_init": "unit", "whiten_bias_epochs": 3},
            # progressive resizing: a 16 px epoch costs ~1/4 and a 24 px one ~1/2 of a 32 px one here.
            # 16-24-32 (2+2+3 epochs): 89.68% val with TTA in 502 s of training; 24-32 (3+4): 89.46-90.08%
            # over 3 seeds in 640-688 s; 6 epochs all at 32 px: 89.54% in 721 s
            "augment.low_res_px": 24, "augment.low_res_epochs": 4, "augment.min_res_px": 16, "augment.min_res_epochs": 2,
        }),
    ),
    "mixconv-fast": (
        "Dynamic convolutions at speed-run cost: mixfastnet (fastnet whose last conv mixes 4 expert kernels "
        "per sample), the fast recipe's Muon, 10 epochs (first 4 at 24 px)",
        dotted_to_nested({
            **_SPEEDRUN, **_MUON, "model": "mixfastnet", "epochs": 10,
            # mixing only the last group's second conv costs ~10% of a step here (mixing groups 2 and 3: ~40%)
            "model_args": {"head_scale": 1 / 256, "head_init": "unit", "k": 4, "mix_groups": [2]},
            "augment.low_res_px": 24, "augment.low_res_epochs": 4,
            "optim.router_lr": 0.05,  # the routers are tiny linear layers: an ordinary lr, not the head's
        }),
    ),
    "fast-sgd": (
        "The speed-run with airbench94's optimizer: Nesterov SGD, triangular lr, bias lr x64, 8 epochs "
        "(slower and less accurate than fast on this CPU; kept for comparison)",
        dotted_to_nested({
            **_SPEEDRUN, "epochs": 8,
            # airbench94's decoupled hyperparameters turned into a mean-loss SGD: lr 11.5 per 1024 images
            # / (1 + 1/(1-0.85)) * 1024 = 1.5; weight decay 0.0153*1024/7851 per step / lr = 1.33e-3
            "optim.name": "sgd", "optim.lr": 1.5, "optim.momentum": 0.85, "optim.nesterov": True,
            "optim.weight_decay": 1.33e-3, "optim.bias_lr_scale": 64.0, "optim.decay_bias": True,
            "schedule.name": "onecycle", "schedule.warmup_epochs": 0.23 * 8, "schedule.warmup_start": 0.2,
            "schedule.final_lr_fraction": 0.07,
        }),
    ),
    # ---- the seed reports, line by line; where a report is silent the choice is marked (unstated)
    "seed000": (
        "Report 000 (89.66% val, CIFAR-10): mixconv000 (7 blocks, PReLU), RandomResizedCrop + rotation 15 + flip, "
        "norm 0.5/0.5, batch 64, label smoothing, RMSprop 1e-3, cosine T_max 100, 40 epochs",
        dotted_to_nested({
            "data.spec": "cifar10", "data.normalize": "fixed", "data.mean": [0.5], "data.std": [0.5],
            "augment.resized_crop": True, "augment.rotation_deg": 15.0, "augment.flip": 0.5, "augment.translate_px": 0,
            "model": "mixconv000", "batch_size": 64, "accumulate_steps": 2,  # accumulation count (unstated)
            "label_smoothing": 0.1,  # smoothing value (unstated)
            "optim.name": "rmsprop", "optim.lr": 1e-3, "optim.alpha": 0.99, "optim.eps": 1e-8, "optim.momentum": 0.9,
            "optim.weight_decay": 0.0,
            "schedule.name": "cosine", "schedule.t_max_epochs": 100, "schedule.eta_min": 1e-6,
            "schedule.warmup_epochs": 0, "epochs": 40,
        }),
    ),
    "seed001": (
        "Report 001 (85.22% best / 83.67% final test, CIFAR-10): mixconv001 (11 blocks, LeakyReLU, 1x1 shortcuts, "
        "kaiming normal), no augmentation, batch 256, cross-entropy, Adam 1e-3 wd 5e-4, 25 epochs",
        dotted_to_nested({
            "data.spec": "cifar10", "data.normalize": "none",
            "augment.flip": 0.0, "augment.translate_px": 0,
            "model": "mixconv001", "init": "kaiming_normal", "batch_size": 256, "label_smoothing": 0.0,
            "optim.name": "adam", "optim.lr": 1e-3, "optim.weight_decay": 5e-4,
            "schedule.name": "constant", "schedule.warmup_epochs": 0, "epochs": 25,
        }),
    ),
    "seed002": (
        "Report 002 (92.38% val, CIFAR-10): mixconv002 (residual, ReLU), RandomAffine + ColorJitter, norm 0.5/0.5, "
        "batch 75, cross-entropy, Adam 1e-3 + cosine, 50 epochs",
        dotted_to_nested({
            "data.spec": "cifar10", "data.normalize": "fixed", "data.mean": [0.5], "data.std": [0.5],
            "augment.flip": 0.0, "augment.translate_px": 0,
            # RandomAffine / ColorJitter ranges (unstated): torchvision-typical values
            "augment.rotation_deg": 10.0, "augment.affine_translate": 0.1, "augment.affine_scale": [0.9, 1.1],
            "augment.brightness": 0.2, "augment.contrast": 0.2, "augment.saturation": 0.2, "augment.hue": 0.1,
            "model": "mixconv002", "batch_size": 75, "eval_batch_size": 50, "label_smoothing": 0.0,
            "optim.name": "adam", "optim.lr": 1e-3, "optim.weight_decay": 0.0,
            "schedule.name": "cosine", "schedule.warmup_epochs": 0, "epochs": 50,
        }),
    ),
    "seed003": (
        "Report 003 part 1 (65% val, 62.6% Kaggle, CIFAR-100): basenet (BN, residual x0.1), dataset mean/std, "
        "flip + random crop, 100 epochs",
        dotted_to_nested({
            "data.spec": "cifar100", "data.normalize": "dataset",
            "augment.flip": 0.5, "augment.translate_px": 4, "augment.translate_pad": "zeros",
            "model": "basenet", "model_args": {"batch_norm": True, "residual": True, "residual_scale": 0.1},
            "batch_size": 128, "label_smoothing": 0.0,  # batch size (unstated)
            "optim.name": "adam", "optim.lr": 1e-3, "optim.weight_decay": 0.0,  # optimizer (unstated)
            "schedule.name": "constant", "schedule.warmup_epochs": 0, "epochs": 100,
        }),
    ),
    "seed003-transfer": (
        "Report 003 part 2 (56.31% test, CIFAR-100): torchvision ResNet, full fine-tuning, upsampled input, "
        "RandomResizedCrop + flip, lr 5e-4, batch 32, 30 epochs (pass model_args.pretrained=PATH for weights)",
        dotted_to_nested({
            "data.spec": "cifar100", "data.normalize": "dataset",
            "augment.resized_crop": True, "augment.flip": 0.5, "augment.translate_px": 0,
            "model": "transfer_resnet18", "model_args": {"finetune": "full", "input_policy": "upsample"},
            "batch_size": 32, "label_smoothing": 0.0,
            "optim.name": "adam", "optim.lr": 5e-4, "optim.weight_decay": 0.0,  # Adam (unstated)
            "schedule.name": "constant", "schedule.warmup_epochs": 0, "epochs": 30,
        }),
    ),
    "seed004": (
        "Report 004 (90.05% best / 89.88% final test, Fashion-MNIST): patchmlp (4x4 patches), batch 128, "
        "kaiming uniform, cross-entropy, Adam 1e-3 wd 5e-4, ReduceLROnPlateau (patience 15, 1e-8) on val loss, 30 epochs",
        dotted_to_nested({
            "data.spec": "fashion-mnist", "data.normalize": "fixed", "data.mean": [0.5], "data.std": [0.5],
            "augment.flip": 0.0, "augment.translate_px": 0,
            "model": "patchmlp", "init": "kaiming_uniform", "batch_size": 128, "label_smoothing": 0.0,
            "optim.name": "adam", "optim.lr": 1e-3, "optim.weight_decay": 5e-4,
            "schedule.name": "plateau", "schedule.plateau_monitor": "val_loss", "schedule.plateau_mode": "min",
            "schedule.plateau_patience": 15, "schedule.plateau_threshold": 1e-8, "epochs": 30,
        }),
    ),
}


def recipe_names() -> list[str]:
    return list(RECIPES)


def resolve_config(recipe: str | None = None, config_file: str | None = None, data: str | None = None,
                   overrides: dict | None = None) -> Config:
    """Defaults < recipe < YAML file < data spec < overrides (a nested dict)."""
    values: dict = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserError(f"unknown recipe '{recipe}'; available: {', '.join(RECIPES)}")
        values = merge(values, RECIPES[recipe][1])
    if config_file:
        values = merge(values, load_yaml(config_file))
    if data is not None:
        values = merge(values, {"data": {"spec": data}})
    if overrides:
        values = merge(values, overrides)
    return from_dict(values)

"""Every experiment file composes with the paper hyperparameters; the OadTR ones run one
fast_dev_run at paper size (on synthetic data of the real feature size, since no dataset is here)."""

from __future__ import annotations

import pytest

from oad.models.base import count_parameters
from oad.tasks import train
from tests.conftest import REPO, compose_cfg, net_on_meta

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
ON_SYNTHETIC = [
    "data=synthetic", "data.source.rgb_dim=2048", "data.source.flow_dim=1024",
    "data.source.num_videos={train: 2, val: 1, test: 1}", "data.source.length_scale=0.05",
    "trainer=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_paper_hyperparameters(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/nonexistent"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.seed == 20
    if name.startswith("oadtr_sw"):  # ours: OadTR's widths and window, its recipe on dense sequences
        assert cfg.model.window == 64 and cfg.model.num_queries == 8 and cfg.model.d_model == 1024
        assert cfg.model.long_memory == 2048 and cfg.model.seq_len == 16 and cfg.data.batch_size == 8
        assert cfg.optimizer.lr == 1e-4 and cfg.scheduler.step_size == 1 and cfg.trainer.max_epochs == 4
    elif name.startswith("oadtr"):
        assert cfg.model.window == 64 and cfg.model.num_queries == 8
        assert cfg.model.d_model == 1024 and cfg.model.num_layers == 3 and cfg.model.decoder_layers == 5
        assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4 and cfg.data.batch_size == 128
        assert cfg.criterion.future_weight == 0.5 and cfg.trainer.gradient_clip_val == 1.0
        assert cfg.scheduler.step_size == 1 and cfg.scheduler.gamma == 0.1
    elif name.startswith("trn"):
        assert cfg.model.window == 64 and cfg.model.num_queries == 8 and cfg.model.hidden_dim == 4096
        assert cfg.optimizer.lr == 5e-4 and cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 21
    elif name.startswith("miniroad"):
        assert cfg.model.window == 128 and cfg.model.stride == 4 and cfg.model.hidden_dim == 1024
        assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 1e-4
        assert cfg.optimizer.weight_decay == 0.05 and cfg.trainer.max_epochs == 10 and cfg.scheduler is None
        assert cfg.data.batch_size == (64 if "tvseries" in name else 16)
    elif name.startswith("cmert"):
        assert cfg.model.long_memory == 1024 and cfg.model.long_stride == 4 and cfg.model.work_memory == 16
        assert cfg.model.context == 2 and cfg.model.anticipation == 8 and cfg.model.future == 48
        assert cfg.optimizer.lr == 2e-4 and cfg.optimizer.weight_decay == 5e-5 and cfg.data.batch_size == 32
        assert cfg.trainer.max_epochs == 16 and cfg.scheduler.warmup_epochs == 10 and cfg.scheduler_interval == "step"
        assert (cfg.criterion.first_weight, cfg.criterion.refined_weight, cfg.criterion.future_weight) == (0.1, 1.0, 0.5)
        assert cfg.ema == {"decay": 0.999, "every_n_steps": 1, "start_step": 0}
    elif name.startswith("mat"):
        assert cfg.model.long_memory == 1024 and cfg.model.long_stride == 4 and cfg.model.groups == 8
        assert cfg.model.work_memory == 32 and cfg.model.anticipation == 8 and cfg.model.future_steps == 48
        assert cfg.model.cci_times == 2 and cfg.model.d_model == 1024
        assert cfg.optimizer.lr == 7e-5 and cfg.optimizer.weight_decay == 5e-5 and cfg.data.batch_size == 16
        assert cfg.trainer.max_epochs == 25 and cfg.scheduler.warmup_epochs == 10 and cfg.scheduler_interval == "step"
        assert cfg.ema == {"decay": 0.999, "every_n_steps": 1, "start_step": 0}
        assert cfg.criterion._target_ == "oad.losses.LSTRCriterion"  # oad's causal rows (MAT.training_logits)
    else:  # lstr, testra
        assert cfg.model.long_memory == 2048 and cfg.model.long_stride == 4 and cfg.model.work_memory == 32
        assert cfg.optimizer.lr == 7e-5 and cfg.optimizer.weight_decay == 5e-5 and cfg.data.batch_size == 16
        assert cfg.trainer.max_epochs == 25 and cfg.scheduler.warmup_epochs == 10 and cfg.scheduler_interval == "step"
    # the data config points at a real reader with the root given on the command line
    assert cfg.data.source._target_ == "oad.data.readers.make_source" and cfg.data.root == "/nonexistent"


PAPER_PARAMS = {"miniroad": 15_763_478, "lstr": 58_882_070, "testra": 58_882_070, "mat": 107_259_926,
                "cmert": 94_685_206}


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.split("_")[0] in PAPER_PARAMS and "thumos14" in e])
def test_successor_experiment_builds_the_paper_model(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/nonexistent"], tmp_path)
    net = net_on_meta(cfg)  # THUMOS'14 Kinetics/ANet features: 2048 + 1024-d, 22 classes
    assert count_parameters(net) == PAPER_PARAMS[name.split("_")[0]]


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("oadtr_sw")])
def test_oadtr_sw_experiment_builds_the_paper_model(name, tmp_path):
    from tests.test_models_oadtr_sw import PAPER_PARAMETERS

    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/nonexistent"], tmp_path)
    assert count_parameters(net_on_meta(cfg)) == PAPER_PARAMETERS


@pytest.mark.slow
def test_oadtr_sw_experiment_fast_dev_run_at_paper_size(tmp_path):
    """One training step and the scoring at paper size, the long memory of 2048 chunks included."""
    from tests.test_models_oadtr_sw import PAPER_PARAMETERS

    cfg = compose_cfg("train", ["experiment=oadtr_sw_kinetics_thumos14", *ON_SYNTHETIC, "~data.source.lstr",
                                "debug=fdr", "data.batch_size=2"], tmp_path)
    result = train(cfg)
    assert result["metrics"]["num_parameters"] == PAPER_PARAMETERS
    assert 0.0 <= result["metrics"]["headline"]["mAP"] <= 1.0


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("trn")])
def test_trn_experiment_builds_the_paper_model(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", "data.root=/nonexistent"], tmp_path)
    net = net_on_meta(cfg)  # THUMOS'14 Kinetics/ANet features: 2048 + 1024-d, 22 classes
    assert count_parameters(net) == 357_828_630


@pytest.mark.slow
@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e.startswith("oadtr") and "_sw" not in e][:2])
def test_oadtr_experiment_fast_dev_run_at_paper_size(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", *ON_SYNTHETIC, "debug=fdr", "data.batch_size=2"], tmp_path)
    result = train(cfg)
    assert result["metrics"]["num_parameters"] == 74_700_844
    assert 0.0 <= result["metrics"]["headline"]["mAP"] <= 1.0

"""Training the VAE (train/vae.py) on real MNIST: exact resume (between epochs and mid-epoch, hw and full),
the run folder, the held-out ELBO of each epoch, the NaN guard, learning-rate schedules, and a 2-epoch run of the
reference protocol."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mnistgen.config import DataConfig, VAEConfig, from_dict
from mnistgen.data.protocols import load_protocol
from mnistgen.device import stream_seed
from mnistgen.errors import MnistgenError, NonFiniteLossError
from mnistgen.evaluate.vae import load_trained_vae
from mnistgen.losses import elbo_samples
from mnistgen.models import vae as vae_models
from mnistgen.runs import RunDir, read_json
from mnistgen.train.vae import EVAL_STREAM, TrainingInterrupted, learning_rate, train_vae

EPOCHS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shrink(protocol, train: int = 1000, held_out: int = 500):
    """The first images of a protocol: 10 steps of 100 per epoch keep these tests fast."""
    return dataclasses.replace(
        protocol, train_images=protocol.train_images[:train].clone(), train_labels=protocol.train_labels[:train],
        eval_images=protocol.eval_images[:held_out], eval_labels=protocol.eval_labels[:held_out],
        test_images=protocol.test_images[:held_out], test_labels=protocol.test_labels[:held_out])


@pytest.fixture(scope="module")
def protocols(mnist_raw):
    return {"hw": shrink(load_protocol("hw", mnist_raw)),
            "full": shrink(load_protocol("full", mnist_raw, validation_size=10000))}


def config_for(protocol: str, **changes) -> VAEConfig:
    return dataclasses.replace(VAEConfig(protocol=protocol, epochs=EPOCHS, device="cpu",
                                         data=DataConfig(offline=True)), **changes)


def weights(run: RunDir) -> dict[str, torch.Tensor]:
    return run.load_checkpoint()["model"]


def without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(protocols, tmp_path_factory):
    """Each protocol trained for 3 epochs in one go: what every resumed run must end with."""
    runs = {}
    for name, protocol in protocols.items():
        run = RunDir(tmp_path_factory.mktemp(f"uninterrupted-{name}"))
        history = train_vae(config_for(name), run, protocol=protocol, show_progress=False)
        runs[name] = (run, history)
    return runs


def test_resume_between_epochs_ends_with_the_same_weights(protocols, uninterrupted, tmp_path):
    name = "hw"  # (the full protocol's own random draws are covered by the mid-epoch test below)
    run = RunDir(tmp_path)
    train_vae(config_for(name, epochs=1), run, protocol=protocols[name], show_progress=False)
    history = train_vae(config_for(name), run, resume=True, protocol=protocols[name], show_progress=False)
    reference, reference_history = uninterrupted[name]
    for key, value in weights(reference).items():
        assert torch.equal(weights(run)[key], value), key
    assert without_times(history) == without_times(reference_history)
    assert without_times(run.read_metrics()) == without_times(reference.read_metrics())


class StopAfter:
    """Plays Ctrl-C: asks the loop to stop when it polls for the (n+1)-th time, i.e. after n steps."""

    def __init__(self, steps: int):
        self.polls, self.steps = 0, steps

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls > self.steps


@pytest.mark.parametrize("name", ["hw", "full"])
def test_interrupt_in_mid_epoch_saves_and_resumes_exactly(name, protocols, uninterrupted, tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(TrainingInterrupted, match="epoch 2 after step 5 of 10"):
        train_vae(config_for(name), run, protocol=protocols[name], stop=StopAfter(15), show_progress=False)
    state = run.load_checkpoint()
    assert (state["epoch"], state["step"]) == (1, 5) and len(run.read_metrics()) == 1
    train_vae(config_for(name), run, resume=True, protocol=protocols[name], show_progress=False)
    reference, _ = uninterrupted[name]
    for key, value in weights(reference).items():
        assert torch.equal(weights(run)[key], value), key
    assert without_times(run.read_metrics()) == without_times(reference.read_metrics())


@pytest.mark.parametrize("seconds, written_after", [(0.0, [1, 2, 3]), (1e300, [3])])
def test_the_checkpoint_and_its_metric_lines_are_written_together_every_checkpoint_seconds(
        seconds, written_after, protocols, uninterrupted, tmp_path, monkeypatch):
    """0: after every epoch; a long interval: after the last epoch only. Either way each write holds the metric
    lines of exactly the epochs the checkpoint holds, and the run ends as the uninterrupted one."""
    from mnistgen.train import common

    run, writes, real_save = RunDir(tmp_path), [], common.save_checkpoint

    def save_checkpoint(path, state):
        writes.append((state["epoch"], len(run.read_metrics())))
        real_save(path, state)

    monkeypatch.setattr(common, "save_checkpoint", save_checkpoint)
    train_vae(config_for("hw", checkpoint_seconds=seconds), run, protocol=protocols["hw"], show_progress=False)
    assert writes == [(epoch, epoch) for epoch in written_after]
    reference, _ = uninterrupted["hw"]
    for key, value in weights(reference).items():
        assert torch.equal(weights(run)[key], value), key
    assert without_times(run.read_metrics()) == without_times(reference.read_metrics())


def test_run_folder_holds_config_data_metrics_and_a_loadable_checkpoint(uninterrupted, protocols):
    run, history = uninterrupted["full"]
    saved = run.read_config()
    assert saved["kind"] == "vae" and saved["mnistgen_version"] and saved["environment"]["torch"]
    assert from_dict(VAEConfig, saved["config"]) == config_for("full")
    data = read_json(run.data)
    assert data["dataset"] == "mnist" and data["protocol"] == "full" and data["dynamic_binarization"] is True
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record) >= {"epoch", "train_elbo", "validation_elbo", "seconds", "lr"}
        assert -400 < record["train_elbo"] < 0 and -400 < record["validation_elbo"] < 0 and record["seconds"] > 0
    state = torch.load(run.checkpoint, weights_only=True)  # loads without unpickling arbitrary objects
    assert state["epoch"] == EPOCHS and state["step"] == 0
    # save/load round trip: the reloaded model reproduces the last epoch's validation ELBO (measured by the C
    # kernels' forward where they train: to float32 rounding; a weight off by 1e-4 moves it by more than 1e-4)
    trained = load_trained_vae(run, "cpu")
    assert trained.epochs == EPOCHS and trained.config == config_for("full")
    generator = torch.Generator().manual_seed(stream_seed(trained.config.seed, EVAL_STREAM, EPOCHS - 1))
    again = elbo_samples(trained.model, protocols["full"].eval_images, generator=generator).mean()
    assert float(again) == pytest.approx(history[-1]["validation_elbo"], rel=1e-6)


@pytest.mark.parametrize("change", [None, "relu-decoder"])
def test_the_held_out_elbo_is_that_of_each_replicas_model_as_written(change, protocols, tmp_path, monkeypatch,
                                                                     needs_native_kernels):
    """Two replicas, batch 64: each record's held-out ELBO is ``elbo_samples`` of that replica's trained model with the
    epoch's draws, to float32 rounding; measured by the C kernels' forward where they train, and where a changed
    decoder (relu) makes them step aside, by the changed model's own forward."""
    if change:
        monkeypatch.setattr(vae_models.Decoder, "logits", lambda self, z: self.output(torch.relu(self.hidden(z))))
    run = RunDir(tmp_path)
    history = train_vae(config_for("hw", epochs=1, replicas=2, batch_size=64), run, protocol=protocols["hw"],
                        show_progress=False, say=lambda line: None)
    for seed, (record,) in history.items():
        assert ("native" in record["trained_by"]) == (change is None), record["trained_by"]
        model = load_trained_vae(run.seed_run(seed), "cpu").model
        draws = torch.Generator().manual_seed(stream_seed(seed, EVAL_STREAM, 0))
        expected = float(elbo_samples(model, protocols["hw"].eval_images, generator=draws).mean())
        assert record["test_elbo"] == pytest.approx(expected, rel=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(protocols, tmp_path):
    run = RunDir(tmp_path)
    train_vae(config_for("hw", epochs=1), run, protocol=protocols["hw"], show_progress=False)
    good = run.checkpoint.read_bytes()
    poisoned = protocols["hw"].train_images.clone()
    poisoned[:, 0] = math.nan  # every image: the ELBO is NaN from the first step of epoch 2
    broken = dataclasses.replace(protocols["hw"], train_images=poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1"):
        train_vae(config_for("hw", epochs=2), run, resume=True, protocol=broken, show_progress=False)
    assert run.checkpoint.read_bytes() == good
    assert len(run.read_metrics()) == 1


def test_resume_refuses_other_settings_and_a_second_run_in_the_same_folder(protocols, tmp_path):
    run = RunDir(tmp_path)
    train_vae(config_for("hw", epochs=1), run, protocol=protocols["hw"], show_progress=False)
    with pytest.raises(MnistgenError, match="--lr, --seed"):
        train_vae(config_for("hw", lr=0.01, seed=1), run, resume=True, protocol=protocols["hw"])
    with pytest.raises(MnistgenError, match="already holds a run"):
        train_vae(config_for("hw"), run, protocol=protocols["hw"])
    with pytest.raises(MnistgenError, match="nothing to resume"):
        train_vae(config_for("hw"), RunDir(tmp_path / "empty"), resume=True, protocol=protocols["hw"])


def test_learning_rate_schedules():
    constant = VAEConfig()
    assert [learning_rate(constant, e) for e in (0, 100, 199)] == [1e-3] * 3
    cosine = VAEConfig(lr_schedule="cosine", lr=1e-3, lr_min=1e-5, epochs=100)
    assert learning_rate(cosine, 0) == pytest.approx(1e-3)
    assert learning_rate(cosine, 50) == pytest.approx((1e-3 + 1e-5) / 2)  # halfway down the cosine
    assert 1e-5 < learning_rate(cosine, 99) < 1.1e-5
    step = VAEConfig(lr_schedule="step", lr=1e-3, lr_decay=0.5, lr_decay_every=30)
    assert [learning_rate(step, e) for e in (0, 29, 30, 59, 60)] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_two_epochs_of_the_reference_protocol_reach_minus_200_nats(mnist_raw, tmp_path):
    """SPEC's defaults (10,000 rounded images, batch 100, Adam 1e-3, seed 1234), cut to 2 epochs."""
    config = VAEConfig(epochs=2, device="cpu")
    history = train_vae(config, RunDir(tmp_path), protocol=load_protocol("hw", mnist_raw), show_progress=False)
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train_elbo"] > history[0]["train_elbo"]
    assert history[-1]["test_elbo"] > -200.0

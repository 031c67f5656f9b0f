"""The train/eval loop of every experiment: pre-training on a source, transfer to a target.

    data   = input_pipeline.get_datasets(config, start_step)      per-host batches
    model  = a pre-trained BiT with a new zero head, or a fresh one
    tx     = SGD (+ AGC) as optax; lr from BiT-HyperRule or the pre-training schedule
    resume from the latest checkpoint, if any
    for each step:
        state = steps.train_step(state, batch, lr)                  jit over the device mesh
        log; every eval_every: evaluate (and the linear probe); every checkpoint_every: save
    final evaluation -> metrics, results.csv; params-only export

The compiled steps (``train_step``, ``eval_step``, ``features_step``) and the functions that
jit them as this loop does live in ``bit_medical.steps``, which benchmarks import alone.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions

import input_pipeline
from bit_medical import checkpoint, experiment, fewshot, hyperrule, metrics, optim, parallel, paths, results, steps
from bit_medical.models import bit, export, pretrained
from input_pipeline.fewshot import k_shot_indices

SCHEDULE_KINDS = ("hyperrule", "step", "cosine")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or inf loss; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- set-up


def make_schedule(config: ml_collections.ConfigDict, train_size: int
                  ) -> tuple[Callable[[int], float], int, float]:
    """Returns ``(lr(step), total_steps, mixup_alpha)`` for the run.

    ``hyperrule``: BiT-HyperRule on the size of the training set actually used (k x classes
    for a k-shot run), as the paper's ``finetune.py``. ``step``/``cosine``:
    the pre-training schedules over ``schedule.epochs``. ``total_steps`` > 0 rescales the
    schedule (warm-up, decays) to that many steps; ``mixup_alpha`` >= 0 overrides the rule.
    """
    s = config.schedule
    if s.kind == "hyperrule":
        lr_fn = hyperrule.lr_schedule(config.optim.base_lr, train_size)
        total, alpha = hyperrule.train_steps(train_size), hyperrule.mixup_alpha(train_size)
    else:  # step | cosine (check_config)
        steps_per_epoch = max(train_size // config.batch_size, 1)
        lr_fn = optim.pretrain_schedule(
            s.kind, base_lr=config.optim.base_lr, global_batch=config.batch_size,
            steps_per_epoch=steps_per_epoch, epochs=s.epochs, warmup_epochs=s.warmup_epochs,
            min_lr=s.min_lr, warmup_start_factor=s.warmup_start_factor)
        total, alpha = s.epochs * steps_per_epoch, 0.0
    if config.total_steps > 0:
        natural_fn, scale = lr_fn, total / config.total_steps
        lr_fn = lambda step: natural_fn(jnp.floor(step * scale))  # noqa: E731
        total = config.total_steps
    if config.mixup_alpha >= 0:
        alpha = config.mixup_alpha
    return jax.jit(lr_fn), int(total), float(alpha)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a UserError naming the valid choices for a config field the loop dispatches on.

    The config files check their own arguments; this catches ``--config.FIELD=`` overrides
    before any data is read.
    """
    if config.model:
        experiment.choice("model", config.model, bit.VARIANTS)
    experiment.choice("head_init", config.head_init, bit.HEAD_INITS)
    experiment.choice("dtype", config.dtype, steps.DTYPES)
    experiment.choice("schedule.kind", config.schedule.kind, SCHEDULE_KINDS)
    experiment.choice("optim.name", config.optim.name, optim.OPTIMIZERS)


def absolute_paths(config: ml_collections.ConfigDict) -> None:
    """Makes the config's paths absolute (``paths.absolute``: relative to here, ``~`` expanded).

    Done where a run starts, so that its saved config.json means the same from anywhere.
    """
    config.pretrained = pretrained.resolve_source(config.pretrained)
    for data in [config.data] + [t.data for t in config.probe.targets.values()]:
        for key in ("data_dir", "train_dir", "val_dir"):
            data[key] = paths.absolute(data[key])


def resolve_normalisation(config: ml_collections.ConfigDict) -> None:
    """Fills an empty ``pp.norm`` with the normalisation the pre-trained model was trained on.

    Training from scratch (no ``pretrained``) takes the schema's default.
    """
    if config.pp.norm:
        return
    source = config.get("pretrained", "")
    if not source:
        norm = experiment.base().pp.norm
    elif source in bit.PUBLISHED:
        norm = "bit"  # released BiT models take [-1, 1] inputs
    elif paths.path(source).is_dir():
        norm = export.load_meta(source).get("preprocessing", {}).get("norm", "")
    else:
        norm = ""
    if not norm:
        raise experiment.UserError(
            f"pp.norm is empty and cannot be read off pretrained={source!r}; set "
            f"--config.pp.norm=bit ([-1, 1]) or --config.pp.norm=imagenet (mean/std)")
    config.pp.norm = norm


def pretrained_model_tag(config: ml_collections.ConfigDict, arch: bit.Architecture) -> str:
    """The ``pretrained_model`` name of results: ``<source>_bit<depth>x<width>`` as the paper's.

    Google's released BiT weights are not the paper's own ImageNet pre-trainings (those are
    ``imagenet1k_bit50x1``, ``imagenet21k_bit152x4``, ...), so they keep their own name
    (``bit_m_r50x1``) and a report never takes one for the other.
    """
    if config.results.pretrained_model:
        return config.results.pretrained_model
    source = config.pretrained
    name = f"bit{arch.tag[1:]}"
    if source in bit.PUBLISHED:
        return bit.published_tag(source)
    if source and paths.path(source).is_dir():
        return export.load_meta(source).get("pretrained_model") or f"custom_{name}"
    return f"{'custom' if source else 'scratch'}_{name}"


def build_model(config: ml_collections.ConfigDict, num_classes: int, *, load_weights: bool
                ) -> tuple[bit.BiT, Any]:
    """The model, and its pre-trained float32 parameters when ``load_weights`` (else None).

    A transfer always starts from a new head drawn with ``head_init`` from the run's seed.
    Without pre-trained weights (training from scratch, or resuming, where the checkpoint
    holds them) only the architecture is read.
    """
    options = dict(head_init=config.head_init, dtype=steps.DTYPES[config.dtype], remat=config.remat)
    if config.pretrained and load_weights:
        model, variables = pretrained.load_model(config.pretrained, num_classes,
                                                 seed=config.seed, **options)
        return model, variables["params"]
    if config.pretrained:
        arch = pretrained.architecture_of(config.pretrained)
        return bit.BiT(arch.block_units, arch.width, num_classes, **options), None
    return bit.create_model(config.model, num_classes, **options), None


def _init_params(model: bit.BiT, seed: int, image_size, sharding) -> Any:
    images = jnp.zeros((1, *image_size, 3), jnp.float32)
    init = jax.jit(lambda key: model.init(key, images)["params"], out_shardings=sharding)
    return init(jax.random.key(seed))


# ----------------------------------------------------------------------------- evaluation


def _run_and_gather(step_fn: Callable, params: Any, batches: Iterable[dict], sharding) -> list[dict]:
    """Host copies of ``step_fn``'s outputs on every batch, gathered once after the last batch.

    The device runs the batches back to back: nothing waits for a result until all are queued.
    """
    return parallel.to_host([step_fn(params, parallel.global_batch(local, sharding))
                             for local in batches])


def _stack(outputs: list[dict]) -> dict:
    """Concatenates host outputs batch by batch, keeping only real (unmasked) rows."""
    keep = np.concatenate([o["mask"] for o in outputs]).astype(bool)
    return {k: np.concatenate([o[k] for o in outputs])[keep]
            for k in outputs[0] if k not in ("mask", "loss")}


def evaluate(eval_fn: Callable, params: Any, batches: Iterable[dict], sharding, *,
             multilabel: bool) -> dict[str, float]:
    """Metrics over one pass of an eval split (every example once, padding masked out)."""
    outputs = _run_and_gather(eval_fn, params, batches, sharding)
    counts = [float(o["mask"].sum()) for o in outputs]
    if not sum(counts):
        raise ValueError("The eval split is empty")
    host = _stack(outputs)
    result = metrics.compute(host["label"], host["probs"], multilabel=multilabel)
    # Each batch's loss is the mean over its real rows.
    result["loss"] = sum(float(o["loss"]) * n for o, n in zip(outputs, counts)) / sum(counts)
    return result


def _features(features_fn, params, batches, sharding) -> tuple[np.ndarray, np.ndarray]:
    host = _stack(_run_and_gather(features_fn, params, batches, sharding))
    return host["features"], host["label"]


def linear_probe(features_fn: Callable, params: Any, probes: dict, sharding,
                 config: ml_collections.ConfigDict) -> dict[str, float]:
    """Closed-form ridge accuracy on frozen features, k examples per class of each target."""
    out = {}
    for name, (data, num_classes) in probes.items():
        train_x, train_y = _features(features_fn, params, data.evals["train"](), sharding)
        test_x, test_y = _features(features_fn, params, data.evals["test"](), sharding)
        for k in config.probe.shots:
            idx = k_shot_indices(train_y, k, config.seed, num_classes)
            acc = fewshot.probe_accuracy(train_x[idx], train_y[idx], test_x, test_y,
                                         num_classes, l2=config.probe.l2)
            out[f"probe/{name}/{k}shot"] = float(acc)
    return out


def _probe_datasets(config: ml_collections.ConfigDict) -> dict:
    """Eval-only pipelines over each probe target's ``train`` and ``test`` splits, each with the
    target's own data and pp sections (`experiment.probe_target`) and the run's normalisation."""
    probes = {}
    for name, target in config.probe.targets.items():
        section = target.data.to_dict()
        # The k-shot pool's features: an unaugmented pass over the train split.
        section["eval_splits"] = {**section["eval_splits"], "train": section["train_split"]}
        cfg = ml_collections.ConfigDict(dict(
            seed=config.seed, batch_size=config.eval_batch_size, eval_batch_size=config.eval_batch_size,
            data=section, pp={**target.pp.to_dict(), "norm": config.pp.norm}))
        data = input_pipeline.get_datasets(cfg)
        if data.info.multilabel:
            raise experiment.UserError(f"probe target {name!r} is multi-label; the ridge probe needs "
                                       f"single-label classes")
        probes[name] = (data, data.info.num_classes)
    return probes


# ----------------------------------------------------------------------------- the loop


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (single process)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a colab worker): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, mgr, step: int) -> bool:
        if jax.process_count() > 1:  # all hosts must agree on the step to stop at
            return mgr.reached_preemption(step)
        return self.requested


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the experiment ``config`` in ``workdir`` (resuming if it holds a checkpoint).

    Returns the final evaluation metrics per eval split, or ``{"preempted": step}`` when a
    SIGTERM stopped the run after saving its state.
    """
    check_config(config)
    workdir = paths.absolute(workdir)
    mgr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    try:
        return _train_and_evaluate(config, workdir, mgr)
    finally:
        mgr.close()  # also after an error: a save in flight completes instead of being torn


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        mgr) -> dict[str, Any]:
    config = ml_collections.ConfigDict(config.to_dict())  # never mutate the caller's config
    absolute_paths(config)
    resolve_normalisation(config)
    is_main = jax.process_index() == 0
    paths.path(workdir).mkdir(parents=True, exist_ok=True)
    if is_main:
        (paths.path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

    mesh = parallel.make_mesh(config.fsdp)
    batch_sharding = parallel.batch_sharding(mesh)
    start = mgr.latest_step() or 0
    data = input_pipeline.get_datasets(config, start_step=start)
    info = data.info
    model, params = build_model(config, info.num_classes, load_weights=start == 0)
    lr_fn, total_steps, mixup_alpha = make_schedule(config, info.train_size)
    tx = steps.make_optimizer(config.optim)
    logging.info("%s: %d classes, %d training examples, %d steps, mixup %.2f", config.data.name,
                 info.num_classes, info.train_size, total_steps, mixup_alpha)

    abstract_state, state_shardings = steps.state_layout(model, tx, mesh, info.image_size)
    if start:
        restored, state = checkpoint.restore_latest(mgr, abstract_state)
        if restored != start:  # the latest was unreadable: the data stream restarts earlier
            start = restored
            data = input_pipeline.get_datasets(config, start_step=start)
        logging.info("Resumed from %s at step %d", mgr.directory, start)
    else:
        if params is None:
            params = _init_params(model, config.seed, info.image_size, state_shardings.params)
        state = jax.jit(functools.partial(steps.fresh_state, tx), out_shardings=state_shardings)(params)
    # Every process joins: the statistics of parameters sharded over hosts are collectives.
    parameter_overview.log_parameter_overview(state.params, include_stats="global",
                                              jax_logging_process=0)

    rng = jax.random.key(config.seed)
    lam_fn = steps.mixup_lambdas(mixup_alpha, config.seed) if mixup_alpha > 0 else lambda _: 1.0
    step_fn = steps.jit_train_step(model, tx, state_shardings, batch_sharding, norm=config.pp.norm,
                                   mixup_alpha=mixup_alpha, batch_split=config.batch_split)
    eval_fn = steps.jit_eval_step(model, multilabel=info.multilabel, norm=config.pp.norm)
    features_fn = steps.jit_features_step(model, norm=config.pp.norm)
    probes = _probe_datasets(config) if config.probe.targets else {}

    tag = pretrained_model_tag(config, model.architecture)
    best = _BestExport(workdir, config.best_split,
                       lambda step: export_meta(config, model, info, tag, step))
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                               every_secs=30)
    pending: list[dict] = []
    train_iter = iter(data.train)
    with _Preemption() as preemption:
        for step in range(start, total_steps):
            # Between log steps nothing here waits for the device or copies from it
            # (tests/test_host_transfers.py).
            batch = parallel.global_batch(next(train_iter), batch_sharding)
            state, step_metrics = step_fn(state, batch, *steps.step_scalars(lr_fn, lam_fn, step), rng)
            pending.append(step_metrics)
            done = step + 1
            progress(done)
            if done % config.log_every == 0 or done == total_steps:
                _check_finite(state)
                writer.write_scalars(done, _mean(pending))
                pending = []
            if config.eval_every and done % config.eval_every == 0 and done < total_steps:
                evals = _evaluate_all(writer, done, eval_fn, state.params, data, batch_sharding,
                                      info)
                best.update(evals, state.params, done)
                if probes:
                    writer.write_scalars(done, linear_probe(features_fn, state.params, probes,
                                                            batch_sharding, config))
            preempted = preemption.reached(mgr, done) and done < total_steps
            if done % config.checkpoint_every == 0 or done == total_steps or preempted:
                _check_finite(state)
                checkpoint.save(mgr, done, state)
            if preempted:
                mgr.wait_until_finished()
                logging.warning("Preempted at step %d; run the same command to resume", done)
                writer.flush()
                return {"preempted": done}
    mgr.wait_until_finished()

    final = _evaluate_all(writer, total_steps, eval_fn, state.params, data, batch_sharding, info)
    best.update(final, state.params, total_steps)
    if probes:
        final["probe"] = linear_probe(features_fn, state.params, probes, batch_sharding, config)
        writer.write_scalars(total_steps, final["probe"])
    writer.flush()
    host_params = parallel.to_host(state.params)
    if is_main and config.schedule.kind == "hyperrule":
        _append_results(config, workdir, final, tag, total_steps)
    export.save(paths.path(workdir) / export.EXPORT_DIRNAME, host_params,
                export_meta(config, model, info, tag, total_steps))
    return final


def _check_finite(state: steps.TrainState) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        raise NonFiniteLossError(
            f"Non-finite loss or gradients at step {bad}; stopping. The parameters after step "
            f"{bad - 1} are kept and no checkpoint with non-finite values was written.")


def _mean(pending: list[dict]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _evaluate_all(writer, step, eval_fn, params, data, sharding, info) -> dict[str, dict]:
    out = {}
    for split, batches in data.evals.items():
        start = time.perf_counter()
        out[split] = evaluate(eval_fn, params, batches(), sharding, multilabel=info.multilabel)
        scalars = {f"{split}/{k}": v for k, v in out[split].items() if np.isfinite(v)}
        writer.write_scalars(step, scalars)
        logging.info("%s at step %d (%.1f s): %s", split, step, time.perf_counter() - start,
                     ", ".join(f"{k} {out[split][k]:.4f}" for k in
                               ("loss", "acc", "mean_auc", "mean_average_precision")))
    return out


class _BestExport:
    """Keeps ``WORKDIR/export_best``: the parameters with the lowest loss on ``split`` so far.

    The reference's pre-training (pretrain.py, ``save_best``) writes ``model.pth.tar`` only
    when the validation loss improves, and its fine-tuning loads that file; this is the same
    export, and ``pretrained=WORKDIR`` prefers it. The best loss lives in the export's
    ``model.json`` (``best_loss``), so a resumed run keeps comparing with it.
    """

    def __init__(self, workdir: str, split: str, meta_fn: Callable[[int], dict]):
        self.directory = paths.path(workdir) / export.BEST_EXPORT_DIRNAME
        self.split, self.meta_fn = split, meta_fn
        self.loss = math.inf
        if split and (self.directory / export.META_FILENAME).exists():
            self.loss = export.load_meta(self.directory)["best_loss"]

    def update(self, evals: dict[str, dict], params: Any, step: int) -> None:
        if not self.split:
            return
        if self.split not in evals:
            raise experiment.UserError(f"best_split {self.split!r} is not an eval split of this run; "
                             f"valid: {', '.join(evals) or 'none'}")
        loss = evals[self.split]["loss"]
        if not loss < self.loss:
            return
        logging.info("%s loss improved from %.5f to %.5f at step %d: writing %s", self.split,
                     self.loss, loss, step, self.directory)
        self.loss = loss
        meta = dict(self.meta_fn(step), best_split=self.split, best_loss=loss)
        export.save(self.directory, parallel.to_host(params), meta)


def _append_results(config, workdir: str, final: dict, tag: str, last_step: int) -> None:
    for split, split_metrics in final.items():
        if split == "probe":
            continue
        results.append(
            paths.path(workdir) / "results.csv", metrics.with_prefix(split_metrics, split),
            path=paths.absolute(workdir), seed=config.seed,
            shot=results.shot_name(config.data.shots or None), pretrained_model=tag,
            dataset=config.results.dataset or config.data.name, last_step=last_step)


def export_meta(config, model: bit.BiT, info, tag: str, step: int) -> dict:
    """What other code needs besides the weights (``model.json``): architecture, labels,
    input size and the exact preprocessing, mean and std included."""
    mean, std = input_pipeline.NORM_MEAN_STD[config.pp.norm]
    return {
        "model": f"BiT-{model.architecture.tag}",
        "block_units": list(model.block_units), "width": model.width,
        "num_classes": info.num_classes, "label_names": list(info.label_names),
        "multilabel": info.multilabel,
        "image_size": list(info.image_size),
        "preprocessing": {
            "kind": config.pp.kind, "resize": config.pp.resize, "crop": config.pp.crop,
            "norm": config.pp.norm, "mean": list(mean), "std": list(std),
            "input": "NHWC float32 RGB: (pixel / max_pixel - mean) / std, max_pixel 255 "
                     "(65535 for 16-bit X-rays); grey images repeated over the 3 channels"},
        "source": config.data.name, "pretrained_model": tag, "step": step,
    }


# ----------------------------------------------------------------------------- finished runs


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was started with."""
    path = paths.path(workdir) / "config.json"
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{workdir} holds no run: {path} is missing") from None


def restore_workdir(workdir: str):
    """``(config, model, state, data)`` of the latest readable checkpoint of the run in ``workdir``.

    Unreadable newer steps are set aside as when training resumes (``checkpoint.restore_latest``).
    """
    workdir = paths.absolute(workdir)
    config = load_config(workdir)
    data = input_pipeline.get_datasets(config)
    model, _ = build_model(config, data.info.num_classes, load_weights=False)
    abstract_state, _ = steps.state_layout(model, steps.make_optimizer(config.optim),
                                      parallel.make_mesh(config.fsdp), data.info.image_size)
    mgr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    try:
        _, state = checkpoint.restore_latest(mgr, abstract_state)
    finally:
        mgr.close()
    return config, model, state, data


def evaluate_workdir(workdir: str, split: str | None = None) -> dict[str, dict]:
    """Metrics of the latest checkpoint in ``workdir`` on its eval splits (or one of them)."""
    config, model, state, data = restore_workdir(workdir)
    splits = dict(data.evals)
    if split is not None:
        if split not in splits:
            raise experiment.UserError(f"unknown split {split!r}; this run evaluates on "
                                       f"{', '.join(sorted(splits))}")
        splits = {split: splits[split]}
    eval_fn = steps.jit_eval_step(model, multilabel=data.info.multilabel, norm=config.pp.norm)
    sharding = parallel.batch_sharding(parallel.make_mesh(config.fsdp))
    return {name: evaluate(eval_fn, state.params, batches(), sharding,
                           multilabel=data.info.multilabel) for name, batches in splits.items()}


def export_workdir(workdir: str) -> str:
    """Writes the params-only export of the latest checkpoint in ``workdir``; returns its path."""
    config, model, state, data = restore_workdir(workdir)
    tag = pretrained_model_tag(config, model.architecture)
    return export.save(paths.path(workdir) / export.EXPORT_DIRNAME,
                       parallel.to_host(state.params),
                       export_meta(config, model, data.info, tag, int(state.step)))

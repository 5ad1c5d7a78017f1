"""Few-shot methods compared by the benchmark, behind one interface.

Every method turns an episode's support set (and class texts) into a predictor of query logits:
``predictor = method.adapt(episode)``, then ``logits = predictor(query_uint8)``. All of them use the
same target architecture (the synthesizer's timm EfficientNet-V2 body) and the same image
normalisation, and none of them ever sees the query labels.

* :class:`SGPSMethod`: the synthesizer (image + text, image only, or text only).
* :class:`ProtoNetMethod`: squared-euclidean nearest prototype in a meta-trained body (Snell et al. 2017).
* :class:`NearestNeighbourMethod`: 1-nearest support image in a body's feature space.
* :class:`LinearProbeMethod`: logistic regression on frozen body features (head-only fine-tuning).
* :class:`FineTuneMethod`: all layers fine-tuned for a fixed step budget after a linear-probe head
  initialisation (LP-FT, Kumar et al. 2022: it beats fine-tuning from a random head).
* :class:`FOMAMLMethod`: SGD on all layers from a meta-learned initialisation (first-order MAML).

BatchNorm stays in eval mode (running statistics) in every gradient-based method: with 5-25 support
images, batch statistics are too noisy to train on and would make predictions depend on the query batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..data.episodes import Episode
from ..image_processing_sgps import SGPSImageProcessor
from ..modeling_sgps import SGPSSynthesizer
from ..target import classify
from ..training.augment import random_flips

Predictor = Callable[[Tensor], Tensor]  # uint8 query images [n, 3, H, W] -> logits [n, num_classes]


class FewShotMethod(Protocol):
    """A method the benchmark can run: ``adapt`` an episode's support set into a query predictor."""

    name: str
    needs_images: bool  # False only for text-only synthesis (the 0-shot setting)

    def adapt(self, episode: Episode) -> Predictor: ...

    def describe(self) -> dict[str, Any]: ...


def _eval_features(body: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Pooled body features in eval mode, batched so that large query sets do not blow up memory."""
    body.eval()
    return torch.cat([body(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def with_support_statistics(body: nn.Module, support: Tensor) -> nn.Module:
    """A copy of ``body`` whose BatchNorm running statistics are those of the (normalised) support images.

    A synthesizer trained with ``support_statistics`` keeps, as running statistics, only the fallback of
    text-only synthesis (a running mean of many tasks' statistics); with them its image features collapse
    to a constant. Such a synthesizer classifies with statistics measured on the support set, so methods
    that start from its base get the same treatment: measured on the support only, never on the queries.
    """
    copy_ = copy.deepcopy(body)
    for module in copy_.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0  # one train-mode pass stores exactly the batch statistics
    copy_.train()(support)
    return copy_.eval()


@dataclass
class SGPSMethod:
    """The synthesizer: one forward pass writes the classifier's weights, which then classify the queries."""

    synthesizer: SGPSSynthesizer
    text_bank: Callable[[list[str]], Tensor]
    use_text: bool = True
    use_images: bool = True
    name: str = "SGPS (image + text)"

    def __post_init__(self) -> None:
        if not (self.use_text or self.use_images):
            raise ValueError("SGPS needs images, texts or both.")
        self.needs_images = self.use_images
        self.processor = SGPSImageProcessor.from_sgps_config(self.synthesizer.config)
        self.synthesizer.eval()

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        n = len(episode.class_names)
        inputs: dict[str, Any] = {"text_embeds": self.text_bank(episode.class_texts), "text_mask": torch.full((n,), self.use_text)}
        if self.use_images:
            inputs.update(support_pixel_values=self.processor.normalize_uint8(episode.support), support_labels=episode.support_labels)
        weights = self.synthesizer.generate_weights(n, **inputs)
        body = self.synthesizer.target
        return torch.no_grad()(lambda images: classify(body, weights, self.processor.normalize_uint8(images)))

    def describe(self) -> dict[str, Any]:
        return {"support images": self.use_images, "class texts": self.use_text, "gradient steps": 0}


@dataclass
class ProtoNetMethod:
    """Prototypical network: logits are negative squared euclidean distances to the class means."""

    body: nn.Module
    processor: SGPSImageProcessor
    name: str = "ProtoNet"
    needs_images: bool = True

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        features = _eval_features(self.body, self.processor.normalize_uint8(episode.support))
        prototypes = _class_means(features, episode.support_labels, len(episode.class_names))

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            return -squared_distances(_eval_features(self.body, self.processor.normalize_uint8(images)), prototypes)

        return predict

    def describe(self) -> dict[str, Any]:
        return {"distance": "squared euclidean"}


@dataclass
class NearestNeighbourMethod:
    """1-nearest-neighbour: class score = similarity to the class's closest support image.

    ``metric`` is ``"cosine"`` (scores are cosine similarities times ``scale``) or ``"euclidean"``
    (negative distances); the argmax is the 1-NN decision either way, the scale only matters for
    probabilities (calibration, AUROC).
    """

    body: nn.Module
    processor: SGPSImageProcessor
    metric: str = "cosine"
    scale: float = 10.0
    name: str = "Nearest neighbour"
    needs_images: bool = True

    def _embed(self, images: Tensor) -> Tensor:
        features = _eval_features(self.body, self.processor.normalize_uint8(images))
        return nn.functional.normalize(features, dim=-1) if self.metric == "cosine" else features

    @torch.no_grad()
    def adapt(self, episode: Episode) -> Predictor:
        if self.metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be cosine or euclidean, got {self.metric!r}.")
        support, labels, n = self._embed(episode.support), episode.support_labels, len(episode.class_names)

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            queries = self._embed(images)
            similarity = queries @ support.T if self.metric == "cosine" else -torch.cdist(queries, support)
            per_class = torch.full((len(queries), n), -torch.inf)
            per_class = per_class.scatter_reduce(1, labels.expand(len(queries), -1), similarity, reduce="amax")
            return self.scale * per_class

        return predict

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric, "k": 1}


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared euclidean distances, expanded (``cdist(...)**2`` has a NaN gradient at distance 0)."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp(min=0)


def _class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    sums = torch.zeros(num_classes, features.shape[1]).index_add(0, labels, features)
    return sums / torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1).to(features.dtype)


def fit_linear_head(features: Tensor, labels: Tensor, num_classes: int, steps: int, lr: float, weight_decay: float) -> nn.Linear:
    """Multinomial logistic regression on fixed features (full-batch Adam from a zero head)."""
    head = nn.Linear(features.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features), labels).backward()
        optimizer.step()
    return head.eval()


@dataclass
class LinearProbeMethod:
    """Head-only fine-tuning: logistic regression on frozen features of the meta-learned base body."""

    body: nn.Module
    processor: SGPSImageProcessor
    lr: float = 0.01
    steps: int = 100
    weight_decay: float = 1e-4
    support_statistics: bool = False  # see with_support_statistics (True for a base trained with support statistics)
    name: str = "Fine-tune head (linear probe)"
    needs_images: bool = True

    def adapt(self, episode: Episode) -> Predictor:
        support = self.processor.normalize_uint8(episode.support)
        body = with_support_statistics(self.body, support) if self.support_statistics else self.body
        with torch.no_grad():
            features = _eval_features(body, support)
        head = fit_linear_head(features, episode.support_labels, len(episode.class_names), self.steps, self.lr, self.weight_decay)

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            return head(_eval_features(body, self.processor.normalize_uint8(images)))

        return predict

    def describe(self) -> dict[str, Any]:
        return {"lr": self.lr, "steps": self.steps, "weight_decay": self.weight_decay, "optimizer": "Adam, full batch",
                "BatchNorm statistics": "support set" if self.support_statistics else "body's running statistics"}


@dataclass
class FineTuneMethod:
    """All layers fine-tuned from the meta-learned base for ``steps`` Adam steps (LP-FT).

    The head starts as the linear probe of :class:`LinearProbeMethod` (``probe_lr``/``probe_steps``),
    so that fine-tuning starts from a sensible classifier instead of destroying features with the
    gradients of a random head. Support batches get random flips. ``trace`` (optional) is called
    after every ``trace_every`` steps with ``(step, predictor)``: the benchmark uses it to find how
    long fine-tuning takes to reach its best accuracy.
    """

    body: nn.Module
    processor: SGPSImageProcessor
    lr: float = 3e-4
    steps: int = 25
    weight_decay: float = 1e-4
    probe_lr: float = 0.01
    probe_steps: int = 100
    support_statistics: bool = False  # see with_support_statistics (True for a base trained with support statistics)
    seed: int = 0
    name: str = "Fine-tune all layers"
    needs_images: bool = True
    trace: Callable[[int, Predictor], None] | None = field(default=None, repr=False)
    trace_every: int = 5

    def adapt(self, episode: Episode) -> Predictor:
        support = self.processor.normalize_uint8(episode.support)
        body = with_support_statistics(self.body, support) if self.support_statistics else copy.deepcopy(self.body).eval()
        labels, n = episode.support_labels, len(episode.class_names)
        with torch.no_grad():
            features = _eval_features(body, support)
        model = nn.Sequential(body, fit_linear_head(features, labels, n, self.probe_steps, self.probe_lr, self.weight_decay)).eval()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + max(episode.index, 0))
        predict = torch.no_grad()(lambda images: model(self.processor.normalize_uint8(images)))
        for step in range(self.steps):
            if self.trace is not None and step % self.trace_every == 0:
                self.trace(step, predict)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(random_flips(support, generator)), labels).backward()
            optimizer.step()
        if self.trace is not None:
            self.trace(self.steps, predict)
        return predict

    def describe(self) -> dict[str, Any]:
        return {
            "lr": self.lr, "steps": self.steps, "weight_decay": self.weight_decay, "optimizer": "Adam, full support batch, flips",
            "head init": f"linear probe ({self.probe_steps} steps, lr {self.probe_lr})",
            "BatchNorm statistics": "support set" if self.support_statistics else "body's running statistics",
        }


class HeadedBody(nn.Module):
    """A body plus a linear head: the parameter set first-order MAML adapts (and meta-learns)."""

    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


def zero_head(model: HeadedBody, num_classes: int) -> dict[str, Tensor]:
    """Head tensors of an episode's classifier: zeros, so the class order of an episode does not matter
    (a learned head init would be tied to label ids that are shuffled per episode; Ye & Chao 2022)."""
    return {"head.weight": torch.zeros(num_classes, model.body.num_features), "head.bias": torch.zeros(num_classes)}


def inner_loop(model: HeadedBody, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor, labels: Tensor,
               steps: int, lr: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``steps`` plain SGD steps on the support loss from ``params`` (no graph kept: first order)."""

    def loss_fn(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, {**p, **buffers}, (x,)), labels)

    grad_fn = torch.func.grad(loss_fn)
    params = {name: value.detach() for name, value in params.items()}
    model.eval()
    for _ in range(steps):
        x = random_flips(images, generator) if generator is not None else images
        grads = grad_fn(params, x)
        params = {name: value - lr * grads[name] for name, value in params.items()}
    return params


@dataclass
class FOMAMLMethod:
    """First-order MAML at test time: ``inner_steps`` SGD steps on all layers from the meta-learned init."""

    model: HeadedBody
    processor: SGPSImageProcessor
    inner_lr: float = 0.01
    inner_steps: int = 10
    name: str = "FOMAML"
    needs_images: bool = True

    def adapt(self, episode: Episode) -> Predictor:
        n = len(episode.class_names)
        init = {k: v for k, v in self.model.named_parameters() if not k.startswith("head.")}
        buffers = dict(self.model.named_buffers())
        support = self.processor.normalize_uint8(episode.support)
        params = inner_loop(self.model, {**init, **zero_head(self.model, n)}, buffers, support, episode.support_labels,
                            self.inner_steps, self.inner_lr)

        @torch.no_grad()
        def predict(images: Tensor) -> Tensor:
            self.model.eval()
            return functional_call(self.model, {**params, **buffers}, (self.processor.normalize_uint8(images),))

        return predict

    def describe(self) -> dict[str, Any]:
        return {"inner_lr": self.inner_lr, "inner_steps": self.inner_steps, "inner optimizer": "SGD, all layers, zero head init"}

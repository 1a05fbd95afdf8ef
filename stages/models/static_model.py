"""The static-embedding student: Model2Vec's method (Tarkka & van Dongen, MinishLab 2024) applied to the task's
own fine-tuned teacher, implemented here because model2vec's `distill` extra needs transformers < 5.4, which
this project's environment cannot hold.

Embeddings (`build_embeddings`, the `inputs` stage, once per task): every word piece of the teacher's vocabulary
goes through the teacher's encoder alone, as [CLS] piece [SEP]; its vector is the mean of the three output
states. PCA keeps `static.dims` components; `static.weighting: zipf` then scales row i by log(1 + i) (Model2Vec's
Zipf weighting: word-piece ids stand in for frequency ranks, so frequent short pieces are damped).
`static.vocab_size` keeps only the first ids (the rest are left out of every sentence). Stored as float16
(embeddings.npy) beside the teacher's tokenizer.json.

Two tables per task: the fine-tuned teacher's (inputs_dir itself), which the distilled student uses, and the same
method on the pretrained encoder the teacher started from (`teacher.model`; inputs_dir/base/), which the models
that use no teacher use: the hard-label static student and compare's static + LR. Their gold-label fits would
otherwise read the fine-tuned teacher's token vectors, so "no teacher" would carry what the teacher learned.

The student: a sentence is the mean of its word pieces' rows (no [CLS]/[SEP]; at most `static.max_length`
pieces); pairs feed the head the siamese features [u, v, |u - v|, u * v]; the head (Linear -> ReLU -> dropout
-> Linear, or one Linear with static.hidden 0) is trained on the transfer set with the teacher's logits
(`distill:` knobs), the embeddings stay frozen. Files: embeddings.npy, tokenizer.json, weights.npz (W0, b0,
W1, b1: the head, x @ W + b), config.json; the export adds model.onnx and model.int8.onnx
(stages/models/bag_onnx.py). Inference needs numpy and `tokenizers` (onnxruntime for the export), never PyTorch.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from stages.errors import StageError
from stages.models.bag_onnx import BagSession, bag_inputs, csr_feed, write_export
from stages.models.predictor import Predictor

EMBEDDINGS_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CONFIG_FILE = "embeddings.npy", "tokenizer.json", "weights.npz", "config.json"
INFO_FILE = "embeddings.json"
BASE_DIR = "base"  # inside the inputs directory: the pretrained encoder's table, for the models without a teacher
ARCH = "static"


def embeddings_dir(inputs_dir: Path, *, teacher: bool) -> Path:
    """The table a static model reads: the fine-tuned teacher's (distilled) or the pretrained encoder's (no teacher)."""
    return Path(inputs_dir) if teacher else Path(inputs_dir) / BASE_DIR


def build_embeddings(teacher_dir: Path | str, out_dir: Path, *, dims: int, weighting: str, batch_size: int, device,
                     vocab_size: int | None = None, source: str = "the teacher",
                     hint: str = "run the teacher stage first") -> dict:
    """out_dir (an existing directory): embeddings.npy, tokenizer.json, embeddings.json, from the encoder at
    teacher_dir (a directory or a Hub id; `source` and `hint` word the error when it cannot be loaded). Returns the
    info."""
    import torch
    from sklearn.decomposition import PCA
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        encoder = AutoModel.from_pretrained(teacher_dir).to(device).eval()
    except (OSError, ValueError) as e:
        raise StageError(f"static embeddings: cannot load {source} from {teacher_dir} ({str(e).splitlines()[0]}); "
                         f"{hint}") from None
    if not getattr(tokenizer, "is_fast", False) or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise StageError(f"static embeddings: the tokenizer of {source} in {teacher_dir} is not a fast tokenizer with "
                         "[CLS] and [SEP] tokens, which the static student needs (its vocabulary)")
    size = min(len(tokenizer), vocab_size or len(tokenizer))  # the first ids: Zipf's rank proxy keeps the frequent
    ids = torch.arange(size)
    vectors = np.zeros((size, encoder.config.hidden_size), np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, size, batch_size), desc="static embeddings", unit="batch", file=sys.stderr,
                          mininterval=1.0):
            piece = ids[start:start + batch_size, None]
            rows = torch.cat([torch.full_like(piece, tokenizer.cls_token_id), piece,
                              torch.full_like(piece, tokenizer.sep_token_id)], dim=1).to(device)
            out = encoder(input_ids=rows, attention_mask=torch.ones_like(rows)).last_hidden_state
            vectors[start:start + len(piece)] = out.mean(dim=1).float().cpu().numpy()
    components = min(dims, vectors.shape[1])
    pca = PCA(n_components=components, svd_solver="full", random_state=0)
    reduced = pca.fit_transform(vectors).astype(np.float32)
    if weighting == "zipf":
        reduced *= np.log1p(np.arange(size, dtype=np.float32))[:, None]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EMBEDDINGS_FILE, reduced.astype(np.float16))
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    info = {"arch": ARCH, "source": source, "vocab_size": size, "dims": components, "teacher_hidden": int(vectors.shape[1]),
            "weighting": weighting, "pca_explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
            "special_ids": sorted(int(i) for i in tokenizer.all_special_ids)}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


class Pieces:
    """Texts -> word-piece ids (the teacher's tokenizer, no special tokens), as CSR bags of mean weights."""

    def __init__(self, tokenizer_path: Path, max_length: int, rows: int):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as e:  # the Rust side raises a bare Exception on a missing or malformed file
            raise StageError(f"cannot read the static student's tokenizer {tokenizer_path} ({e})") from None
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length, self.rows = max_length, rows  # pieces with ids beyond the table's rows are left out

    def bags(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, weights): sentence i's pieces are indices[indptr[i]:indptr[i + 1]], each 1 / count."""
        encoded = [[i for i in e.ids if i < self.rows][: self.max_length]
                   for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        counts = np.array([len(ids) for ids in encoded], np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        indices = np.fromiter((i for ids in encoded for i in ids), np.int64, count=int(indptr[-1]))
        weights = np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32)
        return indptr, indices, weights


def load_embeddings(directory: Path) -> np.ndarray:
    path = Path(directory) / EMBEDDINGS_FILE
    try:
        return np.load(path).astype(np.float32)
    except (OSError, ValueError) as e:
        raise StageError(f"cannot read the static embeddings {path} ({str(e).splitlines()[0]}); rerun the inputs stage") from None


def pool(table: np.ndarray, bag: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Each sentence's weighted sum of table rows (numpy; the same as the graph's ScatterElements)."""
    indptr, indices, weights = bag
    out = np.zeros((len(indptr) - 1, table.shape[1]), np.float32)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    np.add.at(out, rows, table[indices] * weights[:, None])
    return out


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def save(out_dir: Path, inputs_dir: Path, layers: list[tuple[np.ndarray, np.ndarray]], config: dict) -> None:
    """A trained static student in out_dir (an existing temporary directory): the embeddings and tokenizer of
    inputs_dir, the head's layers (W as in x @ W + b) and the config."""
    out_dir = Path(out_dir)
    for name in (EMBEDDINGS_FILE, TOKENIZER_FILE):
        shutil.copy(Path(inputs_dir) / name, out_dir / name)
    np.savez(out_dir / WEIGHTS_FILE, **{f"{kind}{i}": np.asarray(array, np.float32)
                                        for i, layer in enumerate(layers) for kind, array in zip("Wb", layer)})
    (out_dir / CONFIG_FILE).write_text(json.dumps({**config, "arch": ARCH}, indent=2) + "\n")


def _read_layers(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path) as saved:
            return [(saved[f"W{i}"], saved[f"b{i}"]) for i in range(len(saved.files) // 2)]
    except (OSError, ValueError, KeyError) as e:
        raise StageError(f"{path} is not a static student's head ({str(e).splitlines()[0]})") from None


class _Static(Predictor):
    """What both static predictors share: the config and the word pieces."""

    pieces: Pieces

    def bags(self, texts_a: list[str], texts_b: list[str] | None):
        return [self.pieces.bags(texts) for texts in ((texts_a,) if texts_b is None else (texts_a, texts_b))]


def _open(directory: Path, needed: tuple[str, ...], what: str) -> dict:
    from stages.models.onnx_student import read_config

    missing = [name for name in needed if not (Path(directory) / name).is_file()]
    if missing:
        raise StageError(f"{directory} is not {what} (missing {', '.join(missing)})")
    return read_config(Path(directory) / CONFIG_FILE)


class StaticStudent(_Static):
    """A trained static student from its directory, in numpy."""

    def __init__(self, model_dir: Path, device=None):  # device: the registry's signature; numpy runs on the CPU
        model_dir = Path(model_dir)
        self.config = _open(model_dir, (EMBEDDINGS_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CONFIG_FILE), "a saved static student")
        self.table = load_embeddings(model_dir)
        self.layers = _read_layers(model_dir / WEIGHTS_FILE)
        self.pieces = Pieces(model_dir / TOKENIZER_FILE, self.config["max_length"], len(self.table))

    def features(self, texts_a: list[str], texts_b: list[str] | None = None) -> np.ndarray:
        pooled = [pool(self.table, bag) for bag in self.bags(texts_a, texts_b)]
        return pooled[0] if len(pooled) == 1 else pair_features(*pooled)

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int) -> np.ndarray:
        h = self.features(texts_a, texts_b)
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight + bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h.astype(np.float32)


class OnnxStatic(_Static):
    """An exported static student: tokenizer in Rust, mean pooling and head in onnxruntime."""

    def __init__(self, model_dir: Path, variant: str = "fp32", threads: int | None = None, spinning: bool = True):
        model_dir = Path(model_dir)
        self.config = _open(model_dir, (TOKENIZER_FILE, CONFIG_FILE), "an exported static student")
        rows = self.config.get("vocab_rows")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise StageError(f"{model_dir / CONFIG_FILE} has no valid vocab_rows (the embedding rows); rerun the export stage")
        self.pieces = Pieces(model_dir / TOKENIZER_FILE, self.config["max_length"], rows)
        self.session = BagSession(model_dir, variant, threads, spinning)

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts_a), self.config["num_labels"]), np.float32)
        for start in range(0, len(texts_a), batch_size):
            part_b = texts_b[start:start + batch_size] if texts_b is not None else None
            bags = self.bags(texts_a[start:start + batch_size], part_b)
            feeds = [csr_feed(*bag, side=side) for bag, side in zip(bags, "ab")]
            out[start:start + len(bags[0][0]) - 1] = self.session.run(len(bags[0][0]) - 1, *feeds)
        return out


def export(model_dir: Path, out_dir: Path) -> dict:
    """Write the export files of the student in model_dir into out_dir (an existing directory): model.onnx,
    model.int8.onnx, tokenizer.json, config.json. Returns the config written (with parameter counts)."""
    student = StaticStudent(model_dir)
    head = int(sum(w.size + b.size for w, b in student.layers))
    config = {**student.config, "inputs": bag_inputs(student.config["pair"]), "vocab_rows": len(student.table),
              "params_all": int(student.table.size) + head, "params_without_embeddings": head}
    return write_export(Path(out_dir), student.table, student.layers, pair_features=student.config["pair"],
                        copy=Path(model_dir) / TOKENIZER_FILE, config=config)

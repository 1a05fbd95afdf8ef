"""The n-gram student: a linear layer over tf-idf word and character n-grams (or, with `ngram.hidden` > 0, one
hidden ReLU layer on them, fastText's shape), trained on the teacher's logits (the `student` stage, with every
`distill:` knob) or on gold labels (the `baseline` stage).

Features (params.yaml `ngram:`; scikit-learn's analyzers): word n-grams (the student's WORD_PATTERN words,
lower-cased) and character n-grams inside word boundaries (`char_wb`), each analyzer either a vocabulary (the
`max_features` most frequent n-grams seen in at least `min_df` training sentences) or hashed into
2**hash_bits columns. Counts -> 1 + log(count) (sublinear_tf) -> times idf (ln((1 + n) / (1 + df)) + 1, fitted on
the original training sentences, scikit-learn's smooth idf) -> each sentence's row scaled to unit L2 norm.
MASK (augmented rows) is read as a space. Pairs: [x_a, x_b, x_a * x_b] (the two sentences' rows side by side
and their element-wise product, which is non-zero on the n-grams they share): 3 x the columns.

Files (a model directory and an export directory alike): features.json (settings, vocabularies, idf),
weights.npz (W: columns x labels, b: labels; with a hidden layer W: columns x hidden, b: hidden, W1: hidden x
labels, b1: labels) and config.json; the export adds model.onnx and model.int8.onnx
(stages/models/bag_onnx.py: the same sum over a sentence's columns, W's rows weighted by its tf-idf values, then
b, and ReLU, W1 and b1 where there is a hidden layer).
Inference needs numpy, scipy and scikit-learn, never PyTorch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from stages.data.text import MASK, WORD_PATTERN
from stages.errors import StageError
from stages.models.bag_onnx import BagSession, bag_inputs, csr_feed, write_export
from stages.models.predictor import Predictor

FEATURES_FILE, WEIGHTS_FILE, CONFIG_FILE = "features.json", "weights.npz", "config.json"
ARCH = "ngram"


def _analyzers(settings: dict) -> list[tuple[str, tuple[int, int]]]:
    out = []
    if settings.get("word_ngrams"):
        out.append(("word", tuple(settings["word_ngrams"])))
    if settings.get("char_ngrams"):
        out.append(("char_wb", tuple(settings["char_ngrams"])))
    return out


def _vectorizer(analyzer: str, ngram_range: tuple[int, int], settings: dict, vocabulary=None):
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    shared = dict(analyzer=analyzer, ngram_range=ngram_range, lowercase=True, dtype=np.float32,
                  **({"token_pattern": WORD_PATTERN} if analyzer == "word" else {}))
    if settings["features"] == "hashing":
        return HashingVectorizer(n_features=2 ** settings["hash_bits"], alternate_sign=False, norm=None, **shared)
    if vocabulary is not None:
        return CountVectorizer(vocabulary={term: i for i, term in enumerate(vocabulary)}, **shared)
    return CountVectorizer(min_df=settings["min_df"], max_features=settings["max_features"], **shared)


class NgramFeaturizer:
    """Texts -> tf-idf rows (scipy CSR, float32), the same in training, `predict`, `serve` and `compare`."""

    def __init__(self, settings: dict, vocabularies: dict[str, list[str]], idf: np.ndarray):
        self.settings, self.vocabularies, self.idf = settings, vocabularies, np.asarray(idf, np.float32)
        self.vectorizers = [_vectorizer(name, span, settings, vocabularies.get(name)) for name, span in _analyzers(settings)]

    @classmethod
    def fit(cls, texts: list[str], settings: dict) -> NgramFeaturizer:
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfTransformer

        texts = cls._clean(texts, settings)
        vocabularies, counts = {}, []
        for name, span in _analyzers(settings):
            vectorizer = _vectorizer(name, span, settings)
            try:
                counts.append(vectorizer.fit_transform(texts))
            except ValueError as e:  # "After pruning, no terms remain", "empty vocabulary"
                raise StageError(f"ngram: the {name} n-grams {list(span)} of {len(texts)} training sentences leave no "
                                 f"feature ({e}); lower ngram.min_df or use ngram.features=hashing") from None
            if settings["features"] == "vocabulary":
                vocabularies[name] = vectorizer.get_feature_names_out().tolist()
        idf = TfidfTransformer(smooth_idf=True).fit(sparse.hstack(counts).tocsr()).idf_
        return cls(settings, vocabularies, idf)

    @staticmethod
    def _clean(texts: list[str], settings: dict) -> list[str]:
        return [text[: settings["max_chars"]].replace(MASK, " ") for text in texts]

    @property
    def width(self) -> int:
        """Columns of one sentence's row."""
        return len(self.idf)

    def transform(self, texts: list[str]):
        from scipy import sparse
        from sklearn.preprocessing import normalize

        texts = self._clean(list(texts), self.settings)
        x = sparse.hstack([v.transform(texts) for v in self.vectorizers]).tocsr().astype(np.float32)
        if self.settings["sublinear_tf"]:
            np.log(x.data, out=x.data)
            x.data += 1
        x = x @ sparse.diags(self.idf)
        return normalize(x, norm="l2", copy=False).tocsr()

    def features(self, texts_a: list[str], texts_b: list[str] | None = None):
        """One row per example: the sentence's tf-idf row, or [x_a, x_b, x_a * x_b] for a pair."""
        from scipy import sparse

        xa = self.transform(texts_a)
        if texts_b is None:
            return xa
        xb = self.transform(texts_b)
        return sparse.hstack([xa, xb, xa.multiply(xb)]).tocsr().astype(np.float32)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"settings": self.settings, "vocabularies": self.vocabularies,
                                          "idf": [round(float(v), 7) for v in self.idf]}))

    @classmethod
    def load(cls, path: Path) -> NgramFeaturizer:
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(saved["settings"], saved["vocabularies"], np.asarray(saved["idf"], np.float32))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StageError(f"{path} is not an n-gram featurizer ({str(e).splitlines()[0]}); rerun the inputs stage") from None


class CachedFeatures:
    """The featurizer in features_file, its rows memoised on disk: every seed of the student and of the baseline
    featurizes the same texts with the same featurizer, so all but the first read the rows back (scipy's npz)
    instead of recomputing them (about 6 s of 15,000 rt rows on a 2-core CPU, against well under a second).

    The key is a hash of features_file's bytes and of the texts, so a changed featurizer or text is a new entry;
    cache_dir None computes every time. A file that cannot be read is computed again and rewritten."""

    def __init__(self, features_file: Path, cache_dir: Path | None):
        self.features_file, self.cache_dir = Path(features_file), cache_dir
        self._featurizer: NgramFeaturizer | None = None

    @property
    def featurizer(self) -> NgramFeaturizer:
        if self._featurizer is None:  # loaded once, and only when some rows are not in the cache
            self._featurizer = NgramFeaturizer.load(self.features_file)
        return self._featurizer

    def features(self, texts_a: list[str], texts_b: list[str] | None = None):
        from scipy import sparse

        from stages.data.io import atomic_path, input_key

        if self.cache_dir is None:
            return self.featurizer.features(texts_a, texts_b)
        path = Path(self.cache_dir) / f"rows-{input_key([self.features_file], {'a': texts_a, 'b': texts_b})}.npz"
        if path.is_file():
            try:
                return sparse.load_npz(path).tocsr()
            except (OSError, ValueError, KeyError):
                pass  # torn or foreign: computed again below
        rows = self.featurizer.features(texts_a, texts_b)
        with atomic_path(path) as tmp:
            sparse.save_npz(tmp, rows, compressed=False)
        return rows


def _read_config(model_dir: Path) -> dict:
    from stages.models.onnx_student import read_config

    return read_config(Path(model_dir) / CONFIG_FILE)


def _check(model_dir: Path, names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if not (Path(model_dir) / name).is_file()]
    if missing:
        raise StageError(f"{model_dir} is not {what} (missing {', '.join(missing)})")


def save(out_dir: Path, features_file: Path, layers: list[tuple[np.ndarray, np.ndarray]], config: dict) -> None:
    """A trained n-gram student in out_dir (an existing temporary directory: the caller renames it), with the
    featurizer it was trained with (features_file, the inputs stage's). layers: [(W, b)] or [(W, b), (W1, b1)]."""
    out_dir = Path(out_dir)
    shutil.copy(features_file, out_dir / FEATURES_FILE)
    arrays = {}
    for i, (weight, bias) in enumerate(layers):
        arrays[f"W{i or ''}"], arrays[f"b{i or ''}"] = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
    np.savez(out_dir / WEIGHTS_FILE, **arrays)
    (out_dir / CONFIG_FILE).write_text(json.dumps({**config, "arch": ARCH}, indent=2) + "\n")


class _Ngram(Predictor):
    """What both n-gram predictors share: the config and the featurizer."""

    featurizer: NgramFeaturizer

    def features(self, texts_a: list[str], texts_b: list[str] | None = None):
        return self.featurizer.features(texts_a, texts_b)


class NgramStudent(_Ngram):
    """A trained n-gram student from its directory: numpy and scipy (features @ W + b, then ReLU, @ W1 + b1 where
    there is a hidden layer)."""

    def __init__(self, model_dir: Path, device=None):  # device: the registry's signature; numpy runs on the CPU
        model_dir = Path(model_dir)
        path = model_dir / WEIGHTS_FILE
        _check(model_dir, (FEATURES_FILE, WEIGHTS_FILE, CONFIG_FILE), "a saved n-gram student")
        self.config = _read_config(model_dir)
        self.featurizer = NgramFeaturizer.load(model_dir / FEATURES_FILE)
        try:
            with np.load(path) as saved:
                self.layers = [(saved["W"], saved["b"])] + ([(saved["W1"], saved["b1"])] if "W1" in saved else [])
        except (OSError, ValueError, KeyError) as e:
            raise StageError(f"{path} is not an n-gram student's weights ({e})") from None
        width, labels = self.featurizer.width * (3 if self.config["pair"] else 1), self.config["num_labels"]
        hidden = self.layers[0][0].shape[1] if len(self.layers) > 1 else labels
        expected = [("W", (width, hidden)), ("b", (hidden,)), ("W1", (hidden, labels)), ("b1", (labels,))]
        for (name, shape), array in zip(expected, [array for layer in self.layers for array in layer]):
            if array.shape != shape:
                raise StageError(f"{path}: {name} has shape {array.shape}, the features and labels make {shape}")

    @property
    def size(self) -> int:
        """The number of parameters."""
        return int(sum(w.size + b.size for w, b in self.layers))

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int) -> np.ndarray:
        (weight, bias), rest = self.layers[0], self.layers[1:]
        h = np.asarray(self.features(texts_a, texts_b) @ weight + bias, np.float32)
        for out_weight, out_bias in rest:
            h = np.maximum(h, 0) @ out_weight + out_bias
        return np.asarray(h, np.float32)


class OnnxNgram(_Ngram):
    """An exported n-gram student: the featurizer in numpy, the sum and the bias in onnxruntime."""

    def __init__(self, model_dir: Path, variant: str = "fp32", threads: int | None = None, spinning: bool = True):
        model_dir = Path(model_dir)
        _check(model_dir, (FEATURES_FILE, CONFIG_FILE), "an exported n-gram student")
        self.config = _read_config(model_dir)
        self.featurizer = NgramFeaturizer.load(model_dir / FEATURES_FILE)
        self.session = BagSession(model_dir, variant, threads, spinning)

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int) -> np.ndarray:
        x = self.features(texts_a, texts_b)
        out = np.zeros((x.shape[0], self.config["num_labels"]), np.float32)
        for start in range(0, x.shape[0], batch_size):
            part = x[start:start + batch_size]
            out[start:start + part.shape[0]] = self.session.run(part.shape[0], csr_feed(part.indptr, part.indices, part.data))
        return out


def export(model_dir: Path, out_dir: Path) -> dict:
    """Write the export files of the student in model_dir into out_dir (an existing directory): model.onnx,
    model.int8.onnx, features.json, config.json. Returns the config written (with parameter counts)."""
    student = NgramStudent(model_dir)
    (table, bias), rest = student.layers[0], student.layers[1:]
    return write_export(Path(out_dir), table, [(None, bias), *rest], pair_features=False,
                        copy=Path(model_dir) / FEATURES_FILE,
                        config={**student.config, "inputs": bag_inputs(False), "params_all": student.size,
                                "params_without_embeddings": student.size})

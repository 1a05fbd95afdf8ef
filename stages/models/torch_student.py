"""The PyTorch students (the BiLSTM and the CNN) for inference, and what training shares with it.

A student directory (the `student` and `baseline` stages' output) holds model.pt (the state_dict),
config.json and tokenizer.json. `load_student` rebuilds it from those files alone; `Student` is its
`Predictor` (stages/models/predictor.py). `Examples` / `OnDevice` / `model_logits` are the encoded rows and the
batched forward pass that the training loop (stages/student.py) and inference share.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.errors import StageError
from stages.models.batching import DeviceTokens, TokenIds, bucket_batches, inference_batches, sorted_window_batches
from stages.models.cnn_model import CNNClassifier
from stages.models.predictor import EVAL_BATCH, Predictor
from stages.models.student_model import BiLSTMClassifier, StudentClassifier
from stages.models.vocab import Vocab

MODEL_FILE, CONFIG_FILE, VOCAB_FILE = "model.pt", "config.json", "tokenizer.json"


@dataclass
class Examples:
    """Encoded rows: first (and second) texts' token ids, hard labels and, for distillation, the teacher's logits."""

    a: TokenIds
    b: TokenIds | None
    labels: np.ndarray  # int64, -1 = no hard label
    logits: np.ndarray | None  # float32 (n, num_labels), the teacher's

    def __len__(self) -> int:
        return len(self.labels)

    def sizes(self) -> np.ndarray:
        return self.a.lengths + (self.b.lengths if self.b is not None else 0)

    def take(self, rows: np.ndarray) -> Examples:
        return Examples(self.a.take(rows), self.b.take(rows) if self.b is not None else None, self.labels[rows],
                        self.logits[rows] if self.logits is not None else None)

    def batches(self, batching: str, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
        if batching == "buckets":
            return bucket_batches(self.a.steps, batch_size, generator)
        return sorted_window_batches(self.sizes(), batch_size, generator)


def encode_texts(vocab: Vocab, max_length: int, texts_a: list[str], texts_b: list[str] | None,
                 labels: np.ndarray, logits: np.ndarray | None = None) -> Examples:
    def encode(texts: list[str]) -> TokenIds:
        return TokenIds.from_lists(vocab.encode_iter(texts, max_length))

    b = encode(texts_b) if texts_b is not None else None
    return Examples(encode(texts_a), b, labels, logits)


class OnDevice:
    """Examples moved to the device once; yields each batch's rows and model inputs without host copies."""

    def __init__(self, examples: Examples, device: torch.device):
        self.examples, self.device = examples, device
        self.a = DeviceTokens(examples.a, device)
        self.b = DeviceTokens(examples.b, device) if examples.b is not None else None
        self.labels = torch.from_numpy(examples.labels).to(device)
        self.logits = torch.from_numpy(examples.logits).to(device) if examples.logits is not None else None

    def batches(self, batches: list[np.ndarray]):
        if not batches:
            return
        # every batch's row indices reach the device in one copy per pass, not one per batch
        flat = torch.from_numpy(np.concatenate(batches)).to(self.device)
        start = 0
        for rows in batches:
            on_device = flat[start:start + len(rows)]
            start += len(rows)
            ids_a, len_a = self.a.gather(rows, on_device)
            inputs = {"ids_a": ids_a, "len_a": len_a}
            if self.b is not None:
                ids_b, len_b = self.b.gather(rows, on_device)
                inputs.update(ids_b=ids_b, len_b=len_b)
            yield on_device, inputs


@torch.inference_mode()
def model_logits(model: StudentClassifier, data: OnDevice, batch_size: int = EVAL_BATCH,
                 exact: bool | None = None) -> np.ndarray:
    """Logits in row order. exact: batches of one first-text length (dense LSTM calls), the faster choice on
    a CPU (1.2-1.4x, benchmarks/student_throughput.py); False: length-sorted batches of mixed lengths, packed,
    which cuDNN runs faster (1.4x on an H200: fewer, fuller batches). Neither reads a padded step; None picks
    by device."""
    if exact is None:
        exact = data.device.type == "cpu"
    model.eval()
    a, b = data.examples.a, data.examples.b
    second = b.steps if b is not None else None
    batches = inference_batches(a.steps, batch_size, exact=exact, second=second)
    out = torch.zeros((len(data.examples), model.out.out_features), device=data.device)
    for rows, inputs in data.batches(batches):
        out[rows] = model(**inputs).float()
    return out.cpu().numpy()


def build_model(config: dict, pretrained: torch.Tensor | None = None) -> StudentClassifier:
    """The student that config.json describes: the BiLSTM (the paper's), or Kim (2014)'s CNN."""
    shared = dict(emb_dim=config["emb_dim"], fc=config["fc"], dropout=config["dropout"], pair=config["pair"],
                  embedding_mode=config["embedding_mode"], pretrained=pretrained)
    if config.get("arch", "bilstm") == "cnn":
        return CNNClassifier(config["vocab_size"], config["num_labels"], widths=tuple(config["widths"]),
                             maps=config["maps"], **shared)
    return BiLSTMClassifier(config["vocab_size"], config["num_labels"], hidden=config["hidden"], **shared)


class Student(Predictor):
    """A trained PyTorch student ready for inference: raw texts in, logits or class probabilities out."""

    def __init__(self, model: StudentClassifier, vocab: Vocab, config: dict, device: torch.device):
        self.model, self.vocab, self.config, self.device = model.eval(), vocab, config, device

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int,
                       exact: bool | None = None) -> np.ndarray:
        """exact: see `model_logits` (None picks by device)."""
        examples = encode_texts(self.vocab, self.config["max_length"], texts_a, texts_b,
                                np.full(len(texts_a), -1, np.int64))
        return model_logits(self.model, OnDevice(examples, self.device), batch_size, exact=exact)


def load_student(model_dir: Path, device: torch.device | str = "cpu") -> Student:
    """Rebuild a saved student from model_dir alone (the pretrained vectors are in its state_dict)."""
    model_dir, device = Path(model_dir), torch.device(device)
    missing = [name for name in (MODEL_FILE, CONFIG_FILE, VOCAB_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise StageError(f"{model_dir} is not a saved student (missing {', '.join(missing)}); "
                         "run the student or baseline stage first")
    try:
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        model = build_model(config)
        model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise StageError(f"{model_dir} holds a corrupt or incompatible student ({str(e).splitlines()[0]})") from None
    vocab = Vocab.load(model_dir / VOCAB_FILE)
    if len(vocab) != config["vocab_size"]:
        raise StageError(f"{model_dir}: {VOCAB_FILE} has {len(vocab)} words but config.json says {config['vocab_size']}")
    return Student(model.to(device), vocab, config, device)

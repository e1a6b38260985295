"""Hugging Face transformers with a TurboQuant KV cache: `TurboQuantCache`, a `Cache` whose layers
are the library's packed pages, and the "turboquant" attention (registered with transformers'
`AttentionInterface` on import) that reads those pages directly through the torch ops, the CUDA
kernels on a GPU and the CPU engine's attention on the CPU (called eagerly, without torch's
dispatcher: torch_ops.store / attend). Nothing is dequantized: a step
quantizes its new K/V rows into the pages (quantize_store) and attends over the pages
(decode_attention for 1..9 new tokens, prefill_attention in chunks of up to 2048), where
transformers' own QuantizedCache dequantizes the whole history every step.

    import turboquant.transformers                       # registers the "turboquant" attention
    from turboquant.transformers import TurboQuantCache
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="turboquant")
    out = model.generate(**inputs, past_key_values=TurboQuantCache("k3v2"), max_new_tokens=64)

Any KV spec of docs/kv-specs.md, with its policy: edge layers are pages of their own format (the
engine's layout, the same rotation seeds), sink and window an fp16 side buffer the kernels read
in the same pass (SideView), and the key centre (`centre`) is subtracted from each key before it
is stored: each sequence's own, the mean of its prompt's keys (position 0 left out), since the
cache cannot run the model on the engine's calibration passage. A model that runs another attention is switched to "turboquant" by
the cache's first update (with a warning); the "turboquant" attention runs sdpa, with transformers'
own mask, for any other cache (DynamicCache, StaticCache) or none. Batches with padding
(attention_mask) are exact per sequence: pad tokens are never stored. A second generate() on the
cache, given the whole conversation, feeds only the tokens it has not seen. Beam search, batch
expansion, batch selection (indices or a bool mask) and crop (rolling back up to 64 tokens with
a window) copy or release pages; reset() empties the cache, and the next forward may bring
another batch size; copy.deepcopy copies it (reusing a prompt's cache). Sliding-window layers
(Gemma 3, Mistral) attend over their window only (the pages keep every position). Not supported
(refused by name): attention dropout, logit soft-capping, attention sinks. torch.compile of the
model runs, but the cache's attention runs eagerly between the compiled parts (the graph breaks
in every layer).
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import _C
from . import torch_ops  # noqa: F401  registers torch.ops.turboquant.*

__all__ = ["ATTENTION", "TurboQuantCache", "turboquant_attention"]

ATTENTION = "turboquant"
SIDE_EXTRA = 64  # ring rows beyond the window: what kv_size counts (kKvSizeSideExtra), and how far crop() may roll back
_DECODE_MAX = torch_ops.MAX_DECODE_QUERY_TOKENS
_PREFILL_MAX = torch_ops.MAX_PREFILL_CHUNK

logger = logging.getLogger(__name__)
_tls = threading.local()  # .pending: (cache, layer, key, value) of the last update(), until its attention reads it


def _host_available() -> int:
    """Bytes of host memory available now (Linux: MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Pages:
    """The pages of one format of the spec (the edge layers' or the others'): uint8
    [layers, num_pages, kv_heads, block_bytes], and the side buffer fp16
    [slots, layers, sink + ring, 2, kv_heads, head_dim] where the spec has sink or window."""

    def __init__(self, spec: str, layers: int, kv_heads: int, head_dim: int, num_pages: int, side_rows: int, slots: int, device):
        self.spec, self.layers, self.kv_heads, self.head_dim = spec, layers, kv_heads, head_dim
        self.pages = torch.ops.turboquant.new_cache(spec, layers, kv_heads, head_dim, num_pages, device)
        self.side = (torch.zeros((slots, layers, side_rows, 2, kv_heads, head_dim), dtype=torch.float16, device=device)
                     if side_rows else None)

    def grow_pages(self, num_pages: int) -> None:
        old = self.pages
        self.pages = torch.zeros((old.shape[0], num_pages, old.shape[2], old.shape[3]), dtype=torch.uint8, device=old.device)
        self.pages[:, :old.shape[1]] = old

    def grow_slots(self, slots: int) -> None:
        if self.side is not None and self.side.shape[0] < slots:
            old = self.side
            self.side = torch.zeros((slots,) + tuple(old.shape[1:]), dtype=old.dtype, device=old.device)
            self.side[:old.shape[0]] = old

    def nbytes(self) -> int:
        return self.pages.numel() + (self.side.numel() * 2 if self.side is not None else 0)


class _Step:
    """What one forward pass needs in every layer (the same in all of them): the slots of its new
    rows, the sequences' block tables and lengths, on the device. Made once per forward."""

    def __init__(self, key, mask, groups, slots, block_tables, seq_lens, side_slots, new_lens, max_len):
        self.key, self.mask = key, mask  # what identifies the forward: lengths before it, and the mask object
        self.groups = groups              # [(rows, valid columns or None, n)]: one attention call each
        self.slots, self.block_tables, self.seq_lens, self.side_slots = slots, block_tables, seq_lens, side_slots
        self.new_lens, self.max_len = new_lens, max_len


class TurboQuantCache(Cache):
    """A transformers Cache over TurboQuant packed pages (any KV spec; "default" is tq run's).

    spec: a KV spec ("k3v2", "k4v4", "fp16", "k3v2:sink=4:window=64:edge=2/k4v4", ...).
    max_cache_len: tokens per sequence to allocate pages for up front (pages grow as needed
    otherwise, by half their number at least).
    The layout comes from the model at the first forward: layers, KV heads, head dim, device.
    """

    is_compileable = False

    def __init__(self, spec: str = _C.DEFAULT_KV_SPEC, max_cache_len: Optional[int] = None):
        super().__init__(layers=[])
        if not isinstance(spec, (str, _C.KvSpec)):
            raise TypeError(f"TurboQuantCache: spec must be a KV spec string, got {type(spec).__name__}")
        self.spec = _C.KvSpec(spec) if isinstance(spec, str) else spec  # ValueError naming the bad part
        if max_cache_len is not None and (not isinstance(max_cache_len, int) or max_cache_len < 1):
            raise ValueError(f"TurboQuantCache: max_cache_len must be a positive int, got {max_cache_len!r}")
        self.max_cache_len_hint = max_cache_len
        self.page_size = self.spec.page_size
        self.sink, self.window = self.spec.sink, self.spec.window
        knobs = self.spec.policy
        sim = [k for k in knobs if k.startswith("ksim=")]
        if sim:
            raise ValueError(f"TurboQuantCache: KV spec '{self.spec.canonical}': {sim[0]} is a CPU simulation of another format in the "
                             f"turboquant engine (tq perplexity), not a cache this one can hold")
        self.centre = "centre" in knobs
        self.side_rows = self.sink + (self.window + SIDE_EXTRA if self.window else 0)
        self._unset()

    def _unset(self) -> None:
        """The state before the first forward: no layout, no pages (the first forward sets them up)."""
        self._ready = False
        self._groups: List[_Pages] = []
        self._where: List[Tuple[_Pages, int]] = []
        self._columns: List[int] = []       # [layers] token columns seen (pad columns too): transformers' sequence length
        self._lens: List[List[int]] = []    # [layers][batch] tokens stored of each sequence (no pads)
        self._written: List[int] = []       # [batch] the most tokens each sequence has stored since it began: its
        # window ring holds the rows of [written - window - SIDE_EXTRA, written), whatever crop() took back since
        self._tables: List[List[int]] = []  # [batch] page ids of each sequence, in position order
        self._free: List[int] = []          # free page ids, the next one to take last
        self._centres: List[Optional[torch.Tensor]] = []  # [layers] fp32 [batch, kv_heads, head_dim] once the layer's first step fixed it
        self._step: Optional[_Step] = None

    # copy.deepcopy (transformers' recipe for reusing a prompt's cache) and pickle: the spec is a
    # nanobind object, which neither can copy; it is rebuilt from its canonical text. The step plan
    # belongs to one forward and is left behind.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["spec"], state["_step"] = self.spec.canonical, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.spec = _C.KvSpec(state["spec"])

    # ---- layout -------------------------------------------------------------------------------
    def _init(self, module, key: torch.Tensor) -> None:
        config = getattr(module, "config", None)
        if config is None or getattr(config, "num_hidden_layers", None) is None:
            raise ValueError("TurboQuantCache: the attention module has no config.num_hidden_layers to size the cache by")
        n = int(config.num_hidden_layers)
        batch, kv_heads, _, head_dim = key.shape
        self.n_layers, self.kv_heads, self.head_dim = n, kv_heads, head_dim
        self.device, self.batch = key.device, batch
        if key.device.type == "cuda" and not torch_ops.available():
            raise RuntimeError("TurboQuantCache: the model is on a GPU but this turboquant build has no CUDA kernels "
                               "(pip install . where nvcc is found, docs/python.md)")
        if key.device.type not in ("cpu", "cuda"):
            raise ValueError(f"TurboQuantCache: runs on the CPU or a CUDA GPU, the model is on {key.device}")
        n_edge = self.spec.edge_layer_count(n)  # ValueError when edge layers do not fit the model
        per_tok = math.ceil(self.max_cache_len_hint / self.page_size) if self.max_cache_len_hint else 4
        num_pages = max(1, per_tok * batch)
        self._where = []  # [layers] (the _Pages of the layer's format, its local index there)
        groups: Dict[str, _Pages] = {}
        count = {True: n_edge, False: n - n_edge}
        first: Dict[bool, int] = {}  # the first layer of each format
        for layer in range(n):
            first.setdefault(self.spec.is_edge_layer(layer, n), layer)
        self._formats = [(self.spec.layer_format(layer, n), count[edge]) for edge, layer in first.items()]  # (format, its layers)
        self._check_size(num_pages, batch)
        for layer in range(n):
            edge = self.spec.is_edge_layer(layer, n)
            fmt = self.spec.layer_format(layer, n)
            if edge not in groups:
                groups[edge] = _Pages(fmt, count[edge], kv_heads, head_dim, num_pages, self.side_rows, batch, key.device)
            self._where.append((groups[edge], self.spec.local_layer(layer, n)))
        self._groups = list(groups.values())
        self._num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))
        self._tables = [[] for _ in range(batch)]
        self._lens = [[0] * batch for _ in range(n)]
        self._written = [0] * batch
        self._columns = [0] * n
        self._centres = [None] * n
        self._ready = True

    def _check_size(self, num_pages: int, slots: int) -> None:
        """On the CPU, pages and side buffers (every format's) past the 64 GiB a host cache may take,
        or past 90% of the memory available, are refused before they are allocated (torch would zero
        them page by page until the kernel killed the process; the GPU says what it cannot hold itself)."""
        if self.device.type != "cpu":
            return
        pages = sum(math.prod(torch_ops.page_shape(fmt, layers, self.kv_heads, self.head_dim, num_pages)) for fmt, layers in self._formats)
        side = sum(slots * layers * self.side_rows * 2 * self.kv_heads * self.head_dim * 2 for _, layers in self._formats)
        held = self.nbytes  # what this cache holds now, given back as the new tensors replace it
        available = _host_available()
        limit = min(64 * 2**30, 0.9 * (available + held)) if available else 64 * 2**30
        if pages + side > limit:
            raise ValueError(f"TurboQuantCache: {num_pages} pages and {slots} sequences' side buffers of {self.side_rows} rows would take "
                             f"{(pages + side) / 2**30:.1f} GiB ({pages / 2**30:.1f} GiB of pages, {side / 2**30:.1f} GiB of side buffers), "
                             f"more than the {limit / 2**30:.1f} GiB a cache may take on this CPU (64 GiB at most, 90% of the memory "
                             f"available): a smaller batch, max_cache_len or window")

    def _take_page(self) -> int:
        if not self._free:
            grown = max(self._num_pages + max(1, self._num_pages // 2), self._num_pages + 1)
            self._check_size(grown, self.batch)
            for g in self._groups:
                g.grow_pages(grown)
            self._free = list(range(grown - 1, self._num_pages - 1, -1))
            self._num_pages = grown
        return self._free.pop()

    def _release_tail(self, b: int, length: int) -> None:
        keep = (length + self.page_size - 1) // self.page_size
        while len(self._tables[b]) > keep:
            self._free.append(self._tables[b].pop())

    # ---- the transformers Cache API ---------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Records the step's new rows for the "turboquant" attention of this layer, which stores and
        reads them (it needs the padding mask and the module); returns them unchanged."""
        pending = getattr(_tls, "pending", None)
        if pending is not None and pending[0] is self:
            _tls.pending = None
            raise RuntimeError(
                f"TurboQuantCache: layer {pending[1]}'s attention did not read the cache (the model's attention is not "
                f"'{ATTENTION}'); load the model with attn_implementation='{ATTENTION}' or call "
                f"model.set_attn_implementation('{ATTENTION}') (import turboquant.transformers registers it)")
        if key_states.dim() != 4 or value_states.shape != key_states.shape:
            raise ValueError(f"TurboQuantCache.update: key and value states must be [batch, kv_heads, tokens, head_dim] alike, got "
                             f"{list(key_states.shape)} and {list(value_states.shape)}")
        _switch_attention(sys._getframe(1))
        _tls.mask_sizes = None  # the forward's masks are made: what get_mask_sizes announced is spent
        _tls.pending = (self, layer_idx, key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._columns[layer_idx] if self._ready and layer_idx < len(self._columns) else 0

    def get_mask_sizes(self, query, layer_idx: int = 0) -> Tuple[int, int]:
        """Every position seen and the new ones, from 0. transformers asks right before it calls the
        mask function of the attention: the "turboquant" mask (_mask) then knows the mask is for
        this cache (the 2D padding mask), not for another one (transformers' own mask)."""
        # transformers 5.0 passes cache_position (a tensor of the new positions), later ones the query length
        q_len = int(query.shape[0]) if isinstance(query, torch.Tensor) else int(query)
        kv_len = self.get_seq_length(layer_idx) + q_len
        _tls.mask_sizes = kv_len
        return kv_len, 0

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:  # transformers 5.0's name
        return -1

    @property
    def max_batch_size(self) -> int:
        return self.batch if self._ready else -1

    @property
    def batch_size(self) -> int:
        return self.batch if self._ready else -1

    @property
    def max_cache_len(self) -> int:
        return -1

    @property
    def is_initialized(self) -> bool:
        return self._ready

    @property
    def is_croppable(self) -> bool:
        return True

    # Cache's per-layer flags, one a layer (one before the first forward, which gives the count):
    # generate() feeds only the tokens a cache has not seen where not all(is_linear) (all of an
    # empty list is True: it would feed a second turn's whole conversation again), and the masks
    # are sized by the first layer that is none of these. No layer here is sliding in transformers'
    # sense, a cache that keeps only the window: every layer keeps every position and its mask
    # sizes are the whole length; a sliding-window layer's window is the kernels' (sliding_window).
    def _layer_flags(self) -> List[bool]:
        return [False] * (self.n_layers if self._ready else 1)

    is_linear = property(_layer_flags)
    is_sliding = property(_layer_flags)
    is_dummy = property(_layer_flags)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length(layer_idx)

    def reset(self) -> None:
        """Empties the cache and releases its pages. The next forward sets the cache up again, as the
        first did: its batch size (and model) may differ, as with DynamicCache."""
        self._unset()

    def crop(self, max_length: int) -> None:
        """Drops the last -max_length tokens (transformers 5.x), or keeps the first max_length (5.0's
        meaning of a positive value). With a window, at most 64 tokens can be taken back."""
        if isinstance(max_length, torch.Tensor) and max_length.ndim == 0 and not max_length.is_floating_point() and max_length.dtype != torch.bool:
            max_length = max_length.item()  # assisted decoding crops by a count it holds as a 0-d tensor
        if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
            raise TypeError(f"TurboQuantCache.crop: max_length must be an int, got {max_length!r}")
        max_length = int(max_length)
        if not self._ready:
            return
        cols = self._columns[0]
        keep = cols + max_length if max_length < 0 else (cols if max_length == 0 else min(max_length, cols))
        if keep <= 0:
            self.reset()
            return
        drop = cols - keep
        if drop <= 0:
            return
        if self.window:  # the window before the kept tokens must still be in the ring: written - kept <= SIDE_EXTRA
            for b, (n, written) in enumerate(zip(self._lens[0], self._written)):
                if written - max(0, n - drop) > SIDE_EXTRA:
                    raise ValueError(f"TurboQuantCache.crop: the window's side ring can take back {SIDE_EXTRA} tokens from the most a "
                                     f"sequence has stored, not {written - max(0, n - drop)} (sequence {b} stored {written}, now "
                                     f"{n}, would keep {max(0, n - drop)}): reset() and run the prompt again instead")
        for layer in range(self.n_layers):
            self._columns[layer] -= drop
            self._lens[layer] = [max(0, n - drop) for n in self._lens[layer]]
        for b in range(self.batch):
            self._release_tail(b, max(self._lens[layer][b] for layer in range(self.n_layers)))
        self._step = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: sequence b takes sequence beam_idx[b]'s history (its pages are copied)."""
        beam_idx = torch.as_tensor(beam_idx)
        if beam_idx.is_floating_point() or beam_idx.is_complex() or beam_idx.dtype == torch.bool or beam_idx.ndim != 1:
            raise TypeError(f"TurboQuantCache.reorder_cache: beam_idx must be a 1-d integer tensor, got {beam_idx.dtype} of shape "
                            f"{list(beam_idx.shape)}")
        self._select_rows([int(i) for i in beam_idx.tolist()])

    def batch_repeat_interleave(self, repeats: int) -> None:
        if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
            raise ValueError(f"TurboQuantCache.batch_repeat_interleave: repeats must be a positive int, got {repeats!r}")
        if self._ready:
            self._select_rows([b for b in range(self.batch) for _ in range(int(repeats))])

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keeps the sequences `indices` names: their indices, or a bool mask over the batch (as
        DynamicCache indexes its tensors with it)."""
        if not self._ready:
            return
        indices = torch.as_tensor(indices)
        if indices.dtype == torch.bool:
            if tuple(indices.shape) != (self.batch,):
                raise ValueError(f"TurboQuantCache.batch_select_indices: a bool mask must have one entry per sequence ({self.batch}), "
                                 f"got shape {list(indices.shape)}")
            indices = indices.nonzero().flatten()
        self._select_rows([int(i) for i in indices.tolist()])

    def _select_rows(self, rows: Sequence[int]) -> None:
        if not self._ready:
            return
        if any(not 0 <= r < self.batch for r in rows):
            raise ValueError(f"TurboQuantCache: rows {list(rows)} are not all among the cache's {self.batch} sequences")
        if list(rows) == list(range(self.batch)):
            return
        # A cache filled under torch.inference_mode() holds inference tensors, which only inference
        # mode may write in place (generate() reorders beams outside it): the copies run in the mode
        # the tensors were made in.
        with torch.inference_mode(self._groups[0].pages.is_inference()):
            self._copy_rows(rows)
        self._lens = [[lens[r] for r in rows] for lens in self._lens]
        self._written = [self._written[r] for r in rows]
        self.batch = len(rows)
        self._step = None

    def _copy_rows(self, rows: Sequence[int]) -> None:
        """Sequence i's pages, side rows and centre become those of sequence rows[i]."""
        self._check_size(self._num_pages, len(rows))  # the side buffers' new slots (new pages: _take_page)
        old_tables = self._tables
        new_tables: List[List[int]] = []
        src, dst = [], []
        for r in rows:  # fresh pages for every new sequence: the copies cannot overwrite a source
            table = []
            for page in old_tables[r]:
                table.append(self._take_page())
                src.append(page)
                dst.append(table[-1])
            new_tables.append(table)
        if src:
            s = torch.tensor(src, dtype=torch.long, device=self.device)
            d = torch.tensor(dst, dtype=torch.long, device=self.device)
            for g in self._groups:
                g.pages[:, d] = g.pages[:, s]
        idx = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        for g in self._groups:
            if g.side is not None:
                g.grow_slots(len(rows))
                g.side[:len(rows)] = g.side[idx]
        self._centres = [None if c is None else c[idx] for c in self._centres]
        for table in old_tables:
            self._free.extend(reversed(table))
        self._tables = new_tables

    # ---- memory ---------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the cache holds on its device: every allocated page, and the side buffers."""
        if not self._ready:
            return 0
        return sum(g.nbytes() for g in self._groups) + self._centre_bytes()

    def _centre_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self._centres if c is not None)

    def memory(self) -> dict:
        """pages: the bytes of the pages the sequences hold (a partly filled last page counts
        whole); side: the sink/window side buffers; centre: the key centres (fp32, one per
        sequence, layer and KV head); allocated: nbytes. pages + side of one sequence is kv_size's
        figure for its length (turboquant.kv_size, `tq kv-size`)."""
        if not self._ready:
            return {"pages": 0, "side": 0, "centre": 0, "allocated": 0, "tokens": 0}
        page_bytes = self.spec.page_bytes(self.n_layers, self.kv_heads, self.head_dim)
        held = sum(len(t) for t in self._tables)
        side = sum(g.side[:self.batch].numel() * 2 for g in self._groups if g.side is not None)
        return {"pages": held * page_bytes, "side": side, "centre": self._centre_bytes(), "allocated": self.nbytes,
                "tokens": sum(self._lens[0])}

    # ---- one forward's attention ------------------------------------------------------------------
    def _plan(self, layer: int, mask, batch: int, ntok: int) -> _Step:
        key = (tuple(self._lens[layer]), ntok)
        st = self._step
        if st is not None and st.key == key and st.mask is mask:
            return st
        valid = _valid_columns(mask, batch, ntok, self._columns[layer] + ntok)
        ps = self.page_size
        lens = self._lens[layer]
        counts = [ntok if valid is None else sum(valid[b]) for b in range(batch)]
        new_lens = [lens[b] + counts[b] for b in range(batch)]
        for b in range(batch):
            while len(self._tables[b]) * ps < new_lens[b]:
                self._tables[b].append(self._take_page())
        slots = []
        for b in range(batch):
            pos = lens[b]
            for t in range(ntok):
                if valid is None or valid[b][t]:
                    slots.append(self._tables[b][pos // ps] * ps + pos % ps)
                    pos += 1
                else:
                    slots.append(-1)  # a pad token: never stored, never read
        width = max(1, max(len(t) for t in self._tables))
        tables = [t + [0] * (width - len(t)) for t in self._tables]
        dev = self.device
        pin = dev.type == "cuda"  # pinned host memory: the copies do not wait for the GPU's queue

        def tensor(data, dtype):
            return torch.tensor(data, dtype=dtype, pin_memory=pin).to(dev, non_blocking=pin)

        if valid is None or all(c == ntok for c in counts):
            groups = [(list(range(batch)), None, ntok)]
        else:  # a padded batch: each sequence attends over its own tokens
            groups = [([b], [t for t in range(ntok) if valid[b][t]], counts[b]) for b in range(batch) if counts[b] > 0]
        st = _Step(key, mask, groups, tensor(slots, torch.int64), tensor(tables, torch.int32), tensor(new_lens, torch.int32),
                   tensor(list(range(batch)), torch.int32), new_lens, max(new_lens) if new_lens else 0)
        self._step = st
        return st

    # Under torch.compile this runs eagerly (the compiled graph breaks around it): its bookkeeping is
    # Python lists that dynamo would trace and guard on, recompiling for every layer until its
    # recompile limit, to call kernels it cannot trace anyway.
    @torch.compiler.disable
    def _attend(self, module, layer: int, query, key, value, mask, scaling: Optional[float], sliding_window: Optional[int]):
        if not self._ready:
            self._init(module, key)
        batch, q_heads, ntok, head_dim = query.shape
        if (batch, key.shape[1], head_dim) != (self.batch, self.kv_heads, self.head_dim) or layer >= self.n_layers:
            raise ValueError(f"TurboQuantCache: layer {layer} gives K/V of {list(key.shape)} (batch, KV heads, tokens, head dim); "
                             f"the cache holds {self.batch} sequences of {self.n_layers} layers, {self.kv_heads} KV heads of "
                             f"{self.head_dim}")
        if key.device != self.device:
            raise ValueError(f"TurboQuantCache: layer {layer} is on {key.device}, the cache on {self.device}")
        st = self._plan(layer, mask, batch, ntok)
        pages, local = self._where[layer]
        k_rows = key.transpose(1, 2)  # [batch, tokens, kv_heads, head_dim]
        v_rows = value.transpose(1, 2)
        if self.centre:  # keys less their centre, in fp32 as the engine stores them (values alike: one dtype for both)
            if self._centres[layer] is None:
                self._centres[layer] = self._fix_centre(k_rows, st.slots.view(batch, ntok) >= 0, self._lens[layer])
            k_rows = k_rows.float() - self._centres[layer][:, None]
            v_rows = v_rows.float()
        torch_ops.store(pages.pages, k_rows.reshape(-1, self.kv_heads, head_dim).contiguous(),
                        v_rows.reshape(-1, self.kv_heads, head_dim).contiguous(), st.slots, pages.spec, local)
        q = query.transpose(1, 2)  # [batch, tokens, q_heads, head_dim]
        out = torch.zeros((batch, ntok, q_heads, head_dim), dtype=query.dtype, device=query.device) if len(st.groups) > 1 or \
            st.groups[0][1] is not None else None
        for rows, cols, n in st.groups:
            if cols is None:
                res = self._attend_rows(pages, local, q.contiguous(), k_rows, v_rows, st.block_tables, st.seq_lens, st.side_slots,
                                        st.max_len, scaling, sliding_window)
                if out is None:
                    out = res
                else:
                    out[rows] = res
            else:
                b = rows[0]
                c = torch.tensor(cols, dtype=torch.long, device=query.device)
                res = self._attend_rows(pages, local, q[b:b + 1, c].contiguous(), k_rows[b:b + 1, c], v_rows[b:b + 1, c],
                                        st.block_tables[b:b + 1], st.seq_lens[b:b + 1], st.side_slots[b:b + 1], st.new_lens[b], scaling,
                                        sliding_window)
                out[b, c] = res[0]
        self._lens[layer] = list(st.new_lens)
        self._written = [max(w, n) for w, n in zip(self._written, st.new_lens)]
        self._columns[layer] += ntok
        return out

    @staticmethod
    def _fix_centre(k_rows: torch.Tensor, stored: torch.Tensor, lens: List[int]) -> torch.Tensor:
        """Each sequence's key centre from its first stored rows: the mean (in double) of those not at
        position 0, or of all of them when position 0 is all there is (cpu::KvStore::calibrate's rule,
        per sequence). k_rows [batch, tokens, kv_heads, head_dim]; stored [batch, tokens]: not a pad."""
        before = torch.tensor(lens, dtype=torch.long, device=stored.device)[:, None]
        pos = before + stored.long().cumsum(1) - 1  # each stored row's position in its sequence
        use = stored & (pos != 0)
        use = torch.where(use.any(1, keepdim=True), use, stored)
        mu = torch.where(use[:, :, None, None], k_rows.double(), 0.0).sum(1) / use.sum(1).clamp(min=1)[:, None, None]
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("TurboQuantCache: the key centre of the first keys written is not finite (a NaN or inf key)")
        return mu.float()

    def _attend_rows(self, pages: _Pages, local: int, q, k_rows, v_rows, block_tables, seq_lens, side_slots, max_len: int, scaling,
                     sliding_window: Optional[int]):
        """Attention of sequences whose last q.shape[1] tokens are the queries (stored already); a
        sliding-window layer's queries see their last `sliding_window` positions only (the kernels'
        sliding_window: positions before a query's window are masked, and mostly not read)."""
        ntok = q.shape[1]
        scale = float(scaling) if scaling else 0.0
        swa = int(sliding_window or 0)
        def call(prefill, q, lens, bound, k, v):
            if pages.side is None:
                return torch_ops.attend(prefill, pages.pages, q, block_tables, lens, pages.spec, local, bound, scale, sliding_window=swa)
            return torch_ops.attend(prefill, pages.pages, q, block_tables, lens, pages.spec, local, bound, scale, None, pages.side,
                                    side_slots, k.contiguous(), v.contiguous(), self.sink, self.window, swa)

        if ntok <= _DECODE_MAX:
            return call(False, q, seq_lens, max_len, k_rows, v_rows)
        outs = []
        for c0 in range(0, ntok, _PREFILL_MAX):  # chunked prefill: each chunk sees the prefix and itself
            c1 = min(ntok, c0 + _PREFILL_MAX)
            outs.append(call(True, q[:, c0:c1].contiguous(), seq_lens - (ntok - c1), max_len - (ntok - c1), k_rows[:, c0:c1],
                             v_rows[:, c0:c1]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def __repr__(self) -> str:
        if not self._ready:
            return f"TurboQuantCache('{self.spec.canonical}')"
        return (f"TurboQuantCache('{self.spec.canonical}', layers={self.n_layers}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"batch={self.batch}, tokens={self._lens[0]}, {self.nbytes / 2**20:.1f} MiB on {self.device})")


def _valid_columns(mask, batch: int, ntok: int, kv_len: int) -> Optional[List[List[bool]]]:
    """Which of the step's ntok tokens of each sequence are real (not padding), from whichever mask
    the model made: None (no padding), the 2D padding mask ("turboquant"'s, flash's), or a 4D mask
    (sdpa's bool or eager's additive [batch, 1, ntok, kv_len]). In a 4D mask a real token's own row
    sees it, a padding token's does not; the last row does not see every real token where a
    sliding window (Mistral, Gemma 3's local layers) hides the prompt's start from it. A row that
    sees the next token is one a torch workaround unmasked (a padding row: causal rows never see
    ahead). None when every token is real."""
    if mask is None:
        return None
    if mask.dim() == 2:
        if mask.shape != (batch, kv_len):
            raise ValueError(f"TurboQuantCache: the attention mask is {list(mask.shape)}, the step needs [{batch}, {kv_len}] "
                             "(every token seen so far and the new ones)")
        cols = mask[:, -ntok:] != 0
    elif mask.dim() == 4:
        if mask.shape[-2] != ntok or mask.shape[-1] < kv_len:
            raise ValueError(f"TurboQuantCache: the attention mask is {list(mask.shape)}, the step needs [{batch}, 1, {ntok}, >= {kv_len}]")
        sees = mask[:, 0, :, kv_len - ntok:kv_len]  # [batch, ntok, ntok]: query i, the step's token j
        sees = sees if sees.dtype == torch.bool else sees == 0
        cols = sees.diagonal(dim1=-2, dim2=-1).clone()  # [batch, ntok]: token i sees itself
        if ntok > 1:
            cols[:, :-1] &= ~sees.diagonal(offset=1, dim1=-2, dim2=-1)
    else:
        raise ValueError(f"TurboQuantCache: an attention mask of shape {list(mask.shape)} is neither 2D nor 4D")
    cols = cols.cpu()
    if bool(cols.all()):
        return None
    return cols.tolist()


def _switch_attention(frame) -> None:
    """The cache's update() is called by the attention module right before it looks its attention
    function up: where the model runs another one, switch its config to "turboquant" (once, with a
    warning), so that generate(past_key_values=TurboQuantCache(...)) works on any model."""
    module = frame.f_locals.get("self") if frame is not None else None
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", None) if config is not None else None
    if config is None or impl == ATTENTION or not isinstance(module, torch.nn.Module):
        return
    logger.warning("TurboQuantCache: switching the model's attention from '%s' to '%s', which reads the packed pages (other caches "
                   "run sdpa under it); load the model with attn_implementation='%s' to start with it", impl, ATTENTION, ATTENTION)
    config._attn_implementation = ATTENTION


def turboquant_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, **kwargs):
    """The "turboquant" attention of transformers' AttentionInterface: over TurboQuantCache's pages
    when the keys are the ones its update() just returned, sdpa otherwise."""
    pending = getattr(_tls, "pending", None)
    if pending is not None and pending[2] is not key and pending[1] == getattr(module, "layer_idx", None):
        _tls.pending = None
        raise RuntimeError(f"TurboQuantCache: layer {pending[1]}'s attention got other keys than the cache's update returned (the model "
                           "changes them in between); TurboQuantCache cannot serve this model")
    if pending is None or pending[2] is not key:
        if attention_mask is not None and attention_mask.dim() == 2:  # _mask's for a TurboQuantCache: its layout, not sdpa's
            layer = getattr(module, "layer_idx", "?")
            raise RuntimeError(f"'{ATTENTION}' attention: layer {layer} got a 2D padding mask with keys that no "
                               "TurboQuantCache update returned (a layer that reads another layer's keys, or a model that makes its masks "
                               "without transformers' masking_utils); the attention cannot run it")
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    _tls.pending = None
    cache, layer = pending[0], pending[1]
    if dropout:
        raise ValueError("TurboQuantCache: attention dropout is not supported (the cache is for inference: model.eval())")
    # position_bias: T5's relative attention bias, which sdpa adds to the scores
    for name in ("softcap", "s_aux", "sinks", "position_bias"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"TurboQuantCache: the attention's '{name}' is not supported by the TurboQuant kernels")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise RuntimeError("TurboQuantCache: its attention has no backward (the kernels are for inference); run the model under "
                           "torch.no_grad() or torch.inference_mode(), or train with transformers' DynamicCache")
    if getattr(module, "layer_idx", layer) != layer:
        raise RuntimeError(f"TurboQuantCache: the update was for layer {layer}, the attention is layer {module.layer_idx}")
    return cache._attend(module, layer, query, key, value, attention_mask, scaling, sliding_window), None


def _mask(batch_size=None, attention_mask=None, kv_length=None, kv_offset=0, **kwargs):
    """The "turboquant" mask (transformers' AttentionMaskInterface). For a TurboQuantCache, whose
    get_mask_sizes announced these sizes right before: the 2D padding mask as it is (the kernels
    are causal by position and take the sliding window themselves), None where nothing is padded.
    For any other cache (DynamicCache, StaticCache, ...) or none: transformers' own sdpa mask, with
    its sizes and mask function, for the sdpa that the attention runs then."""
    announced = getattr(_tls, "mask_sizes", None)
    _tls.mask_sizes = None
    if announced is not None and announced == kv_length and kv_offset == 0:
        if attention_mask is not None and attention_mask.dim() == 2 and bool(attention_mask.all()):
            return None
        return attention_mask
    return sdpa_mask(batch_size=batch_size, attention_mask=attention_mask, kv_length=kv_length, kv_offset=kv_offset, **kwargs)


AttentionInterface.register(ATTENTION, turboquant_attention)
AttentionMaskInterface.register(ATTENTION, _mask)

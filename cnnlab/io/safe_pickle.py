"""A restricted unpickler: pickles as data, never as code.

A pickle is a small program for a stack machine; its GLOBAL opcodes name any
importable object and REDUCE calls it, which is how a hostile file runs ``os.system``.
``restricted_load`` runs that machine with every way to reach code closed:

- GLOBAL / STACK_GLOBAL / INST / EXT resolve only names in an explicit allow-list
  (``{(module, name): object}``); nothing is imported and no attribute is looked up.
  Anything else raises FileFormatError ("... refuses to load global os.system: files
  are data, not code").
- REDUCE, NEWOBJ, OBJ and INST may call only objects that came from that allow-list.
- BUILD (``__setstate__`` / ``__dict__`` update) applies only to instances of classes
  in the allow-list, so a file cannot set attributes on the allowed functions or
  classes themselves.
- APPEND(S) / SETITEM(S) / ADDITEMS apply only to lists, dicts and sets.
- Persistent ids go to the ``persistent_load`` callback the caller supplies (torch
  checkpoints keep tensor data outside the pickle this way), or are refused.

The machine is Python's own pure-Python unpickler (``pickle._Unpickler``) with those
opcodes wrapped; every other error a malformed pickle provokes is reported as
FileFormatError naming the file.
"""
import _compat_pickle
import collections
import pickle
import types

import numpy as np

from cnnlab.errors import FileFormatError


def _latin1_encode(text, encoding="latin1"):
    """Stand-in for ``_codecs.encode``: Python 3 writes ``bytes`` into protocol-2 pickles
    as ``_codecs.encode(<str>, 'latin1')``. Only that encoding is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only as latin1 bytes, "
                                     f"got encoding {encoding!r}")
    return text.encode("latin1")


_reconstruct = np.ndarray(0).__reduce__()[0]            # numpy.(_)core.multiarray._reconstruct
_scalar = np.float64(0).__reduce__()[0]                 # numpy.(_)core.multiarray.scalar
_frombuffer = np.arange(1).__reduce_ex__(5)[0]          # numpy.(_)core.numeric._frombuffer

NUMPY_GLOBALS = types.MappingProxyType({
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
})
"""What pickled numpy arrays (any protocol, numpy 1.x or 2.x, Python 2 or 3) need:
``_reconstruct``/``ndarray``/``dtype`` (protocols 0-4), ``_frombuffer`` (protocol 5),
``scalar`` (numpy scalars), ``_codecs.encode`` (bytes in Python 3 protocol-2 pickles),
and ``collections.OrderedDict``. Read-only; extend with ``{**NUMPY_GLOBALS, ...}``.
CIFAR's "python version" batches load with this (they are Python 2 pickles: pass
encoding="latin1", or "bytes" to get bytes keys such as b"data"). numpy itself refuses
to build an object array from raw bytes, so object arrays can only hold objects the
pickle itself builds under these same rules."""


def _source_name(fileobj, source):
    if source is not None:
        return str(source)
    name = getattr(fileobj, "name", None)
    return str(name) if isinstance(name, (str, bytes)) or hasattr(name, "__fspath__") else "pickle"


class _RestrictedUnpickler(pickle._Unpickler):
    """pickle._Unpickler with the opcodes that reach code restricted (see module doc)."""

    def __init__(self, file, allowed_globals, persistent_load, source, hint, **kwargs):
        super().__init__(file, **kwargs)
        self._hint = f"; {hint}" if hint else ""
        self._allowed = dict(allowed_globals)
        self._callables = {id(v): v for v in self._allowed.values()}
        self._classes = tuple({id(v): v for v in self._allowed.values()
                               if isinstance(v, type)}.values())
        self._persistent = persistent_load
        self._source = source

    # --- names -------------------------------------------------------------------
    def find_class(self, module, name):
        key = (module, name)
        if key not in self._allowed and self.proto < 3 and self.fix_imports:
            # Python 2 pickles name e.g. __builtin__ / copy_reg; look up the Python 3 name too
            if key in _compat_pickle.NAME_MAPPING:
                key = _compat_pickle.NAME_MAPPING[key]
            elif module in _compat_pickle.IMPORT_MAPPING:
                key = (_compat_pickle.IMPORT_MAPPING[module], name)
        if key not in self._allowed:
            raise FileFormatError(
                f"cnnlab refuses to load global {module}.{name} from {self._source}: "
                f"files are data, not code{self._hint}")
        return self._allowed[key]

    def persistent_load(self, pid):
        if self._persistent is None:
            raise FileFormatError(f"{self._source}: pickle refers to external data "
                                  f"(persistent id {pid!r}) and none is expected here")
        return self._persistent(pid)

    # --- calls ---------------------------------------------------------------------
    def _check_callable(self, func, opcode):
        if self._callables.get(id(func)) is not func:
            raise FileFormatError(f"{self._source}: pickle {opcode} on {type(func).__name__} "
                                  f"object that is not in the allow-list: files are data, "
                                  f"not code")

    def load_reduce(self):
        self._check_callable(self.stack[-2], "REDUCE")
        super().load_reduce()

    def load_newobj(self):
        self._check_callable(self.stack[-2], "NEWOBJ")
        super().load_newobj()

    def load_newobj_ex(self):
        self._check_callable(self.stack[-3], "NEWOBJ_EX")
        super().load_newobj_ex()

    def load_obj(self):
        marked = self.stack        # items since the last MARK; the first one is the class
        if not marked:
            raise pickle.UnpicklingError("OBJ without a class")
        self._check_callable(marked[0], "OBJ")
        super().load_obj()

    # INST resolves its class through find_class, so it is already restricted.

    # --- state ---------------------------------------------------------------------
    def load_build(self):
        inst = self.stack[-2]
        if not self._classes or isinstance(inst, type) or not isinstance(inst, self._classes):
            raise FileFormatError(f"{self._source}: pickle sets the state of a "
                                  f"{type(inst).__name__} object, which is not an instance "
                                  f"of an allowed class: files are data, not code")
        super().load_build()

    def _check_container(self, kinds, opcode):
        target = self.metastack[-1][-1]      # APPENDS & co. act on the object below the MARK
        if not isinstance(target, kinds):
            raise FileFormatError(f"{self._source}: pickle {opcode} on a "
                                  f"{type(target).__name__}, expected a container")

    def load_append(self):
        target = self.stack[-2]
        if not isinstance(target, list):
            raise FileFormatError(f"{self._source}: pickle APPEND on a {type(target).__name__}")
        super().load_append()

    def load_appends(self):
        self._check_container(list, "APPENDS")
        super().load_appends()

    def load_setitem(self):
        target = self.stack[-3]
        if not isinstance(target, dict):
            raise FileFormatError(f"{self._source}: pickle SETITEM on a {type(target).__name__}")
        super().load_setitem()

    def load_setitems(self):
        self._check_container(dict, "SETITEMS")
        super().load_setitems()

    def load_additems(self):
        self._check_container(set, "ADDITEMS")
        super().load_additems()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def restricted_load(fileobj, allowed_globals, persistent_load=None, *,
                    encoding="ASCII", errors="strict", source=None, hint=None):
    """Unpickle one object from binary file ``fileobj`` using only ``allowed_globals``.

    allowed_globals: dict ``{(module, name): object}`` -- the only globals the pickle
        may name; the object is what it gets (often a small stand-in written for the
        purpose, e.g. a function that builds a numpy array). Classes among the values
        are the only ones whose instances may receive state (BUILD).
    persistent_load: callable(pid) -> object for pickles with persistent ids, or None
        to refuse them.
    encoding, errors: how to decode Python 2 ``str`` objects (as in ``pickle.load``;
        use encoding="latin1" or "bytes" for Python 2 pickles of numpy arrays).
    source: name for error messages (defaults to ``fileobj.name``).
    hint: text appended to the message when a global is refused (what to do instead).

    Reads exactly one pickle, leaving ``fileobj`` positioned just after its STOP
    opcode. Raises FileFormatError for a refused global, a disallowed operation or
    any malformed/truncated pickle.
    """
    where = _source_name(fileobj, source)
    unpickler = _RestrictedUnpickler(fileobj, allowed_globals, persistent_load, where, hint,
                                     encoding=encoding, errors=errors)
    try:
        return unpickler.load()
    except FileFormatError as err:
        if where not in str(err):            # raised by a stand-in that does not know the file
            raise FileFormatError(f"{where}: {err}") from err
        raise
    except EOFError as err:
        raise FileFormatError(f"{where}: truncated pickle (ended before its STOP opcode)") from err
    except (Exception, MemoryError, RecursionError) as err:   # whatever a bad pickle provokes
        raise FileFormatError(f"{where}: not a valid pickle of the expected data "
                              f"({type(err).__name__}: {err})") from err

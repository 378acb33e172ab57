/*
 * _native.c - the Python face of libheavylock.
 *
 * After CPython's Modules/fcntlmodule.c: every blocking call runs with the
 * GIL released and loops on EINTR while PyErr_CheckSignals() lets Ctrl-C
 * through; errors raise OSError with errno and the path; multi-phase init.
 *
 * Built on the limited API (abi3, CPython >= 3.10): one wheel serves every
 * later CPython.  Hence heap types only, PyType_GetSlot instead of type
 * fields, and the function forms of the bytes/str accessors.
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <time.h>
#endif

#include "heavylock.h"

/*
 * Threads.  A Lock handle is one hold of the lock (one open file
 * description), not one per thread, so a thread may release what another
 * acquired.  What a handle cannot do is serve two calls at once: the C
 * handle keeps the descriptor and the waiting thread in its fields, and the
 * GIL is released around the wait.  A second acquire() would overwrite them
 * (and its failure path close the descriptor the first thread waits on), a
 * close() would free memory the waiter still uses.  So each handle has a
 * mutex, taken by every method that touches the C handle and held across the
 * wait; a call that finds it taken fails AT ONCE with RuntimeError rather
 * than queueing behind a wait that may never end.  Only acquire() releases
 * the GIL while holding the mutex, so "taken" always means "another thread
 * is waiting in acquire() on this handle".  Threads that want to queue for
 * the lock open a handle each.
 */
typedef struct {
  PyObject_HEAD
  hl_lock_t *lock;
  PyThread_type_lock mutex;
} LockObject;

/* The one place where a library result becomes a Python exception.  The
 * header's contract: a result is 0 or more, one of the HL_E* codes, or
 * -errno.  `detail`, when given, replaces the generic message. */
static PyObject *raise_hl(int rc, const char *path, const char *detail) {
  const char *msg = detail ? detail : hl_strerror(rc);
  int err;
  switch (rc) {
  case HL_EENV:
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
  case HL_EFORMAT:
    PyErr_Format(PyExc_ValueError, "%s: %s", path, msg);
    return NULL;
  case HL_ENOTHELD:
    PyErr_SetString(PyExc_RuntimeError, "release of a lock that is not held");
    return NULL;
  case HL_EFORKED:
    PyErr_SetString(PyExc_RuntimeError,
                    "release in a forked child: the lock belongs to the parent process");
    return NULL;
  case HL_EBUSY: err = EAGAIN; break;            /* BlockingIOError  */
  case HL_ETIMEDOUT: err = ETIMEDOUT; break;     /* TimeoutError     */
  case HL_ESYMLINK: err = ELOOP; break;
  case HL_ENOTREG: err = EINVAL; break;
  default: err = rc < 0 ? -rc : EIO; break;      /* -errno */
  }
  /* OSError(errno, ...) picks the subclass (FileNotFoundError, ...). */
  PyObject *exc = PyObject_CallFunction(PyExc_OSError, "isz", err, msg, path);
  if (exc) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
  }
  return NULL;
}

static double monotonic(void) {
#ifdef _WIN32
  return (double)GetTickCount64() / 1e3;
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
#endif
}

/* A path argument (str, bytes or os.PathLike) as a bytes object; NULL with
 * an exception set.  The caller owns the reference. */
static PyObject *path_bytes(PyObject *arg) {
  PyObject *b = NULL;
  if (!PyUnicode_FSConverter(arg, &b))
    return NULL;
  return b;
}

/* ---- the per-handle mutex (see "Threads" above) ---- */

/* Take the handle's mutex without waiting: 0, or -1 with RuntimeError. */
static int handle_take(LockObject *self) {
  if (self->mutex != NULL && PyThread_acquire_lock(self->mutex, NOWAIT_LOCK))
    return 0;
  PyErr_SetString(PyExc_RuntimeError,
                  self->mutex == NULL
                      ? "Lock was not initialised"
                      : "this Lock handle is in use by another thread waiting in acquire(); "
                        "a handle serves one call at a time: open one Lock per thread");
  return -1;
}

/* Take the handle for one call: 0, or -1 with RuntimeError (another thread
 * is waiting on it) or ValueError (closed). */
static int handle_enter(LockObject *self) {
  if (handle_take(self) < 0)
    return -1;
  if (self->lock == NULL) {
    PyThread_release_lock(self->mutex);
    PyErr_SetString(PyExc_ValueError, "lock is closed");
    return -1;
  }
  return 0;
}

static void handle_leave(LockObject *self) { PyThread_release_lock(self->mutex); }

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  (void)args;
  (void)kw;
  allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
  LockObject *self = (LockObject *)alloc(type, 0);
  if (self == NULL)
    return NULL;
  self->lock = NULL;
  self->mutex = PyThread_allocate_lock();
  if (self->mutex == NULL) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  return (PyObject *)self;
}

static int Lock_init(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"path", NULL};
  PyObject *pathobj;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, PyUnicode_FSConverter, &pathobj))
    return -1;
  if (handle_take(self) < 0) {
    Py_DECREF(pathobj);
    return -1;
  }
  const char *path = PyBytes_AsString(pathobj);
  hl_lock_close(self->lock); /* __init__ called again: drop the old handle */
  self->lock = NULL;
  int rc = hl_lock_open(&self->lock, path);
  PyThread_release_lock(self->mutex);
  if (rc < 0)
    raise_hl(rc, path, NULL);
  Py_DECREF(pathobj);
  return rc < 0 ? -1 : 0;
}

static void Lock_dealloc(LockObject *self) {
  /* No thread is inside a method: each call holds a reference. */
  PyTypeObject *tp = Py_TYPE(self);
  hl_lock_close(self->lock);
  if (self->mutex)
    PyThread_free_lock(self->mutex);
  freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
  tp_free(self);
  Py_DECREF(tp);
}

PyDoc_STRVAR(acquire_doc,
"acquire(timeout=None) -> bool\n\n"
"Take the lock. timeout None or negative waits as long as it takes, 0 tries\n"
"once, >0 waits that many seconds (inf: forever). Returns False when it is\n"
"busy or the time ran out. Raises OSError(EDEADLK) when this handle already\n"
"holds the lock or this thread holds or waits for the same lock file through\n"
"another handle; RuntimeError when another thread is waiting on this handle;\n"
"OSError for anything else.");

/* A signal only interrupts the core's wait when it lands inside a blocking
 * system call (-EINTR).  One that lands between two of them (while the
 * timed wait re-arms its watch or tries the lock) is noticed by nobody: the
 * core keeps waiting, Python sees the Ctrl-C only when the wait ends, up to
 * the whole timeout later.  So a timed wait is cut into slices of at most
 * this many seconds, with PyErr_CheckSignals() between them.  (The waits
 * without a deadline block in flock(2), as CPython's fcntl.flock does.) */
#define SIGNAL_SLICE 0.5

/* Acquire with the GIL released, looping on EINTR and on slices; 1 got it,
 * 0 busy or timed out, -1 with an exception set.  The caller holds the
 * handle. */
static int do_acquire(LockObject *self, double timeout) {
  if (hl_lock_held(self->lock)) {
    raise_hl(-EDEADLK, hl_lock_path(self->lock), "this handle already holds the lock");
    return -1;
  }
  if (isinf(timeout))
    timeout = -1; /* inf: forever (a deadline that far overflows the core's ints) */
  double deadline = monotonic() + (timeout > 0 ? timeout : 0);
  int rc;
  for (;;) {
    double left = timeout;
    int sliced = 0;
    if (timeout > 0) {
      left = deadline - monotonic();
      if (left <= 0) {
        rc = HL_ETIMEDOUT;
        break;
      }
      if (left > SIGNAL_SLICE) {
        left = SIGNAL_SLICE;
        sliced = 1;
      }
    }
    Py_BEGIN_ALLOW_THREADS
    rc = hl_lock_acquire(self->lock, left);
    Py_END_ALLOW_THREADS
    if (rc != -EINTR && !(sliced && rc == HL_ETIMEDOUT))
      break;
    if (PyErr_CheckSignals() < 0)
      return -1;
  }
  if (rc == 0)
    return 1;
  if (rc == HL_EBUSY || rc == HL_ETIMEDOUT)
    return 0;
  raise_hl(rc, hl_lock_path(self->lock), NULL);
  return -1;
}

static PyObject *Lock_acquire(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *tobj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &tobj))
    return NULL;
  double timeout = -1;
  if (tobj != Py_None) {
    timeout = PyFloat_AsDouble(tobj);
    if (timeout == -1 && PyErr_Occurred())
      return NULL;
    if (timeout != timeout) {
      PyErr_SetString(PyExc_ValueError, "timeout must not be NaN");
      return NULL;
    }
  }
  if (handle_enter(self) < 0)
    return NULL;
  int r = do_acquire(self, timeout);
  handle_leave(self);
  return r < 0 ? NULL : PyBool_FromLong(r);
}

/* Release if `only_if_held` is 0 or the handle holds the lock. */
static PyObject *release(LockObject *self, int only_if_held) {
  if (handle_enter(self) < 0)
    return NULL;
  int rc = 0;
  if (!only_if_held || hl_lock_held(self->lock))
    rc = hl_lock_release(self->lock);
  if (rc < 0)
    raise_hl(rc, hl_lock_path(self->lock), NULL);
  handle_leave(self);
  if (rc < 0)
    return NULL;
  Py_RETURN_NONE;
}

static PyObject *Lock_release(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  return release(self, 0);
}

static PyObject *Lock_close(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (self->lock == NULL)
    Py_RETURN_NONE; /* closing twice is fine */
  if (handle_enter(self) < 0)
    return NULL;
  hl_lock_close(self->lock);
  self->lock = NULL;
  handle_leave(self);
  Py_RETURN_NONE;
}

static PyObject *Lock_set_label(LockObject *self, PyObject *arg) {
  const char *label = NULL;
  Py_ssize_t n = 0;
  if (arg != Py_None) {
    if ((label = PyUnicode_AsUTF8AndSize(arg, &n)) == NULL)
      return NULL;
    if ((size_t)n != strlen(label)) {
      PyErr_SetString(PyExc_ValueError, "label contains a NUL character");
      return NULL;
    }
  }
  if (handle_enter(self) < 0)
    return NULL;
  hl_lock_set_label(self->lock, label);
  handle_leave(self);
  Py_RETURN_NONE;
}

static PyObject *Lock_enter(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (handle_enter(self) < 0)
    return NULL;
  int r = do_acquire(self, -1);
  handle_leave(self);
  return r < 0 ? NULL : Py_NewRef((PyObject *)self);
}

static PyObject *Lock_exit(LockObject *self, PyObject *args) {
  (void)args;
  if (self->lock == NULL)
    Py_RETURN_FALSE; /* closed inside the with block: nothing is held */
  PyObject *r = release(self, 1);
  if (r == NULL)
    return NULL;
  Py_DECREF(r);
  Py_RETURN_FALSE;
}

static PyObject *Lock_get_held(LockObject *self, void *c) {
  (void)c;
  /* A handle another thread is still waiting on does not hold the lock yet
   * as far as Python can tell: that acquire() has not returned. */
  if (self->mutex == NULL || self->lock == NULL ||
      !PyThread_acquire_lock(self->mutex, NOWAIT_LOCK))
    Py_RETURN_FALSE;
  int held = self->lock != NULL && hl_lock_held(self->lock);
  handle_leave(self);
  return PyBool_FromLong(held);
}

static PyObject *Lock_get_path(LockObject *self, void *c) {
  (void)c;
  /* The path never changes while the handle is open, and close() cannot
   * run while another thread waits: no need for the mutex. */
  if (self->lock == NULL) {
    PyErr_SetString(PyExc_ValueError, "lock is closed");
    return NULL;
  }
  return PyUnicode_DecodeFSDefault(hl_lock_path(self->lock));
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     acquire_doc},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "Release the lock."},
    {"close", (PyCFunction)Lock_close, METH_NOARGS,
     "Release if held and free the handle. RuntimeError while another thread waits on it."},
    {"set_label", (PyCFunction)Lock_set_label, METH_O,
     "Label for the holder record (rewritten at once when held)."},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Lock_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Lock_getset[] = {
    {"held", (getter)Lock_get_held, NULL, "True while this handle holds the lock.", NULL},
    {"path", (getter)Lock_get_path, NULL, "The lock file's path.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyType_Slot Lock_slots[] = {
    {Py_tp_doc, "Lock(path): crash-safe cross-process lock (flock(2) on `path`)."},
    {Py_tp_new, Lock_new},
    {Py_tp_init, Lock_init},
    {Py_tp_dealloc, Lock_dealloc},
    {Py_tp_methods, Lock_methods},
    {Py_tp_getset, Lock_getset},
    {0, NULL}};

static PyType_Spec Lock_spec = {"heavylock._native.Lock", sizeof(LockObject), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, Lock_slots};

/* ---- module functions ---- */

static PyObject *record_dict(const hl_record_t *r) {
  return Py_BuildValue("{s:l,s:K,s:d,s:s,s:s,s:s,s:s}", "pid", r->pid, "start",
                       (unsigned long long)r->start, "acquired", r->acquired, "host", r->host,
                       "boot_id", r->boot_id, "label", r->label, "cmd", r->cmd);
}

/* hl_status() for a path object; 0, or -1 with an exception set. */
static int status_of(PyObject *arg, hl_status_t *st) {
  PyObject *pathobj = path_bytes(arg);
  const char *path = pathobj ? PyBytes_AsString(pathobj) : NULL;
  if (path == NULL) {
    Py_XDECREF(pathobj);
    return -1;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_status(path, st);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    raise_hl(rc, path, NULL);
  Py_DECREF(pathobj);
  return rc < 0 ? -1 : 0;
}

static PyObject *mod_status(PyObject *m, PyObject *arg) {
  (void)m;
  hl_status_t st;
  if (status_of(arg, &st) < 0)
    return NULL;
  PyObject *waiters = PyList_New(0);
  if (waiters == NULL)
    return NULL;
  for (int i = 0; i < st.nwaiters; i++) {
    PyObject *w = Py_BuildValue("{s:l,s:s}", "pid", st.waiters[i].pid, "how",
                                st.waiters[i].how == 'b' ? "flock" : "watch");
    if (w == NULL || PyList_Append(waiters, w) < 0) {
      Py_XDECREF(w);
      Py_DECREF(waiters);
      return NULL;
    }
    Py_DECREF(w);
  }
  PyObject *rec = Py_None;
  if (st.has_record || st.stale_record) {
    if ((rec = record_dict(&st.record)) == NULL) {
      Py_DECREF(waiters);
      return NULL;
    }
  } else {
    Py_INCREF(rec);
  }
  PyObject *held_for = st.held_for >= 0 ? PyFloat_FromDouble(st.held_for) : Py_NewRef(Py_None);
  return Py_BuildValue("{s:O,s:l,s:O,s:O,s:N,s:N,s:N,s:s}", "held", st.held ? Py_True : Py_False,
                       "holder_pid", st.holder_pid, "has_record",
                       st.has_record ? Py_True : Py_False, "stale_record",
                       st.stale_record ? Py_True : Py_False, "record", rec, "held_for", held_for,
                       "waiters", waiters, "method", st.method ? st.method : "none");
}

static PyObject *mod_describe_holder(PyObject *m, PyObject *arg) {
  (void)m;
  hl_status_t st;
  char buf[512];
  if (status_of(arg, &st) < 0)
    return NULL;
  hl_holder_describe(&st, buf, sizeof(buf));
  return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)strlen(buf), "replace");
}

static PyObject *mod_resolve_path(PyObject *m, PyObject *args) {
  (void)m;
  const char *root = NULL;
  if (!PyArg_ParseTuple(args, "|z", &root))
    return NULL;
  hl_path_t p;
  int rc = hl_path_resolve(root, &p);
  if (rc < 0)
    return raise_hl(rc, root ? root : ".", rc == HL_EENV ? p.why : NULL);
  return Py_BuildValue("(sss)", p.path, p.source, p.why);
}

static PyObject *mod_proc_cmdline(PyObject *m, PyObject *arg) {
  (void)m;
  long pid = PyLong_AsLong(arg);
  if (pid == -1 && PyErr_Occurred())
    return NULL;
  char buf[HL_CMD_MAX];
  if (hl_proc_cmdline(pid, buf, sizeof(buf)) < 0)
    Py_RETURN_NONE;
  return PyUnicode_DecodeFSDefault(buf);
}

static PyObject *mod_mem_available(PyObject *m, PyObject *Py_UNUSED(ignored)) {
  (void)m;
  uint64_t b;
  if (hl_mem_available(&b) < 0)
    Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(b);
}

static PyObject *mod_tree_rss(PyObject *m, PyObject *arg) {
  (void)m;
  long pid = PyLong_AsLong(arg);
  if (pid == -1 && PyErr_Occurred())
    return NULL;
  uint64_t b;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_mem_tree_rss(pid, &b);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(b);
}

static PyObject *mod_gguf_info(PyObject *m, PyObject *arg) {
  (void)m;
  PyObject *pathobj = path_bytes(arg);
  const char *path = pathobj ? PyBytes_AsString(pathobj) : NULL;
  if (path == NULL) {
    Py_XDECREF(pathobj);
    return NULL;
  }
  hl_gguf_t g;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_gguf_read(path, &g);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    raise_hl(rc, path, rc == HL_EFORMAT ? "not a GGUF model file (or a damaged one)" : NULL);
  Py_DECREF(pathobj);
  if (rc < 0)
    return NULL;
  return Py_BuildValue("{s:I,s:K,s:K,s:K,s:K,s:s,s:s,s:K}", "version", g.version, "n_tensors",
                       (unsigned long long)g.n_tensors, "n_kv", (unsigned long long)g.n_kv,
                       "file_size", (unsigned long long)g.file_size, "tensor_bytes",
                       (unsigned long long)g.tensor_bytes, "architecture", g.architecture,
                       "name", g.name, "context_length", (unsigned long long)g.context_length);
}

static PyMethodDef module_methods[] = {
    {"status", mod_status, METH_O, "status(path) -> dict: who holds the lock, who waits."},
    {"describe_holder", mod_describe_holder, METH_O,
     "describe_holder(path) -> 'held by pid 4242 (label) for 12 s'"},
    {"resolve_path", mod_resolve_path, METH_VARARGS,
     "resolve_path(root=None) -> (path, source, why); ValueError names a bad variable."},
    {"proc_cmdline", mod_proc_cmdline, METH_O, "proc_cmdline(pid) -> str or None"},
    {"mem_available", mod_mem_available, METH_NOARGS, "MemAvailable in bytes, or None."},
    {"tree_rss", mod_tree_rss, METH_O, "RSS of pid and its descendants in bytes, or None."},
    {"gguf_info", mod_gguf_info, METH_O, "gguf_info(path) -> dict of a GGUF model's header."},
    {NULL, NULL, 0, NULL}};

static int module_exec(PyObject *m) {
  PyObject *type = PyType_FromModuleAndSpec(m, &Lock_spec, NULL);
  if (type == NULL)
    return -1;
  int rc = PyModule_AddObjectRef(m, "Lock", type);
  Py_DECREF(type);
  if (rc < 0)
    return -1;
  return PyModule_AddStringConstant(m, "VERSION", hl_version());
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                                        "heavylock._native",
                                        "The C core of heavylock (libheavylock).",
                                        0,
                                        module_methods,
                                        module_slots,
                                        NULL,
                                        NULL,
                                        NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModuleDef_Init(&module_def); }

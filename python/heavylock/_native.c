/*
 * _native.c - the Python face of libheavylock.
 *
 * After CPython's Modules/fcntlmodule.c: every blocking call runs with the
 * GIL released and loops on EINTR while PyErr_CheckSignals() lets Ctrl-C
 * through; errors raise OSError with errno and the path; multi-phase init.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <time.h>

#include "heavylock.h"

typedef struct {
  PyObject_HEAD
  hl_lock_t *lock;
} LockObject;

/* Raise the right exception for a library error about `path`. */
static PyObject *raise_hl(int rc, const char *path) {
  if (rc > -30000) {
    errno = -rc;
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
  }
  int err = rc == HL_ESYMLINK ? ELOOP : rc == HL_ENOTREG ? EINVAL : EIO;
  PyObject *exc = PyObject_CallFunction(PyExc_OSError, "isz", err, hl_strerror(rc), path);
  if (exc) {
    PyErr_SetObject(PyExc_OSError, exc);
    Py_DECREF(exc);
  }
  return NULL;
}

static double monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int Lock_init(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"path", NULL};
  PyObject *pathobj;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, PyUnicode_FSConverter, &pathobj))
    return -1;
  const char *path = PyBytes_AS_STRING(pathobj);
  if (self->lock) {
    hl_lock_close(self->lock);
    self->lock = NULL;
  }
  int rc = hl_lock_open(&self->lock, path);
  if (rc < 0) {
    raise_hl(rc, path);
    Py_DECREF(pathobj);
    return -1;
  }
  Py_DECREF(pathobj);
  return 0;
}

static void Lock_dealloc(LockObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  hl_lock_close(self->lock);
  tp->tp_free(self);
  Py_DECREF(tp);
}

static int check_open(LockObject *self) {
  if (self->lock == NULL) {
    PyErr_SetString(PyExc_ValueError, "lock is closed");
    return -1;
  }
  return 0;
}

PyDoc_STRVAR(acquire_doc,
"acquire(timeout=None) -> bool\n\n"
"Take the lock. timeout None or negative waits as long as it takes, 0 tries\n"
"once, >0 waits that many seconds. Returns False when it is busy or the time\n"
"ran out. Raises OSError(EDEADLK) when this thread already holds or waits\n"
"for the same lock file, OSError for anything else.");

/* Acquire with the GIL released, looping on EINTR; 1 got it, 0 busy or
 * timed out, -1 with an exception set. */
static int do_acquire(LockObject *self, double timeout) {
  double deadline = monotonic() + (timeout > 0 ? timeout : 0);
  int rc;
  for (;;) {
    double left = timeout;
    if (timeout > 0) {
      left = deadline - monotonic();
      if (left <= 0) {
        rc = HL_ETIMEDOUT;
        break;
      }
    }
    Py_BEGIN_ALLOW_THREADS
    rc = hl_lock_acquire(self->lock, left);
    Py_END_ALLOW_THREADS
    if (rc != -EINTR)
      break;
    if (PyErr_CheckSignals() < 0)
      return -1;
  }
  if (rc == 0)
    return 1;
  if (rc == HL_EBUSY || rc == HL_ETIMEDOUT)
    return 0;
  raise_hl(rc, hl_lock_path(self->lock));
  return -1;
}

static PyObject *Lock_acquire(LockObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"timeout", NULL};
  PyObject *tobj = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &tobj) || check_open(self) < 0)
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
  int r = do_acquire(self, timeout);
  if (r < 0)
    return NULL;
  return PyBool_FromLong(r);
}

static PyObject *Lock_release(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (check_open(self) < 0)
    return NULL;
  int rc = hl_lock_release(self->lock);
  if (rc == HL_ENOTHELD) {
    PyErr_SetString(PyExc_RuntimeError, "release of a lock that is not held");
    return NULL;
  }
  if (rc == HL_EFORKED) {
    PyErr_SetString(PyExc_RuntimeError,
                    "release in a forked child: the lock belongs to the parent process");
    return NULL;
  }
  if (rc < 0)
    return raise_hl(rc, hl_lock_path(self->lock));
  Py_RETURN_NONE;
}

static PyObject *Lock_close(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  hl_lock_close(self->lock);
  self->lock = NULL;
  Py_RETURN_NONE;
}

static PyObject *Lock_set_label(LockObject *self, PyObject *arg) {
  if (check_open(self) < 0)
    return NULL;
  const char *label = NULL;
  if (arg != Py_None && (label = PyUnicode_AsUTF8(arg)) == NULL)
    return NULL;
  hl_lock_set_label(self->lock, label);
  Py_RETURN_NONE;
}

static PyObject *Lock_enter(LockObject *self, PyObject *Py_UNUSED(ignored)) {
  if (check_open(self) < 0 || do_acquire(self, -1) < 0)
    return NULL;
  return Py_NewRef((PyObject *)self);
}

static PyObject *Lock_exit(LockObject *self, PyObject *args) {
  (void)args;
  if (self->lock && hl_lock_held(self->lock))
    hl_lock_release(self->lock);
  Py_RETURN_FALSE;
}

static PyObject *Lock_get_held(LockObject *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->lock && hl_lock_held(self->lock));
}

static PyObject *Lock_get_path(LockObject *self, void *c) {
  (void)c;
  if (check_open(self) < 0)
    return NULL;
  return PyUnicode_DecodeFSDefault(hl_lock_path(self->lock));
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     acquire_doc},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "Release the lock."},
    {"close", (PyCFunction)Lock_close, METH_NOARGS, "Release if held and free the handle."},
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
    {Py_tp_new, PyType_GenericNew},
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
  PyObject *pathobj;
  if (!PyUnicode_FSConverter(arg, &pathobj))
    return -1;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = hl_status(PyBytes_AS_STRING(pathobj), st);
  Py_END_ALLOW_THREADS
  if (rc < 0)
    raise_hl(rc, PyBytes_AS_STRING(pathobj));
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
  if (rc == HL_EENV) {
    PyErr_SetString(PyExc_ValueError, p.why);
    return NULL;
  }
  if (rc < 0)
    return raise_hl(rc, root ? root : ".");
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
  PyObject *pathobj;
  if (!PyUnicode_FSConverter(arg, &pathobj))
    return NULL;
  hl_gguf_t g;
  int rc = hl_gguf_read(PyBytes_AS_STRING(pathobj), &g);
  if (rc < 0) {
    if (rc == HL_EFORMAT)
      PyErr_Format(PyExc_ValueError, "%s: not a GGUF model file (or a damaged one)",
                   PyBytes_AS_STRING(pathobj));
    else
      raise_hl(rc, PyBytes_AS_STRING(pathobj));
    Py_DECREF(pathobj);
    return NULL;
  }
  Py_DECREF(pathobj);
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
  if (PyModule_AddObject(m, "Lock", type) < 0) {
    Py_DECREF(type);
    return -1;
  }
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

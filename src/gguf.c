/*
 * gguf.c - read a GGUF model's header and metadata without its tensors.
 *
 * Layout (little-endian, versions 2 and 3): "GGUF", u32 version, u64 tensor
 * count, u64 key/value count, the key/values (string key, u32 type, value),
 * the tensor infos (string name, u32 n_dims, u64 dims[n_dims], u32 type, u64
 * offset), padding to general.alignment (default 32), then tensor data.
 * Everything read is bounded: a hostile or truncated file gives HL_EFORMAT.
 */
#define _FILE_OFFSET_BITS 64
#include "os.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define MAX_STRING (1u << 20)
#define MAX_COUNT (1ull << 24)
#define MAX_DEPTH 4

enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 };

typedef struct {
  FILE *f;
  int bad;
} rd_t;

static int rd(rd_t *r, void *p, size_t n) {
  if (!r->bad && fread(p, 1, n, r->f) != n)
    r->bad = 1;
  return !r->bad;
}

static uint64_t rd_u64(rd_t *r) {
  uint64_t v = 0;
  rd(r, &v, 8);
  return v;
}

static uint32_t rd_u32(rd_t *r) {
  uint32_t v = 0;
  rd(r, &v, 4);
  return v;
}

static int skip(rd_t *r, uint64_t n) {
  if (r->bad || n > (1ull << 40) || hl__fseek(r->f, (int64_t)n, SEEK_CUR) != 0)
    r->bad = 1;
  return !r->bad;
}

/* Read a string into buf (truncated to fit), or skip it when buf is NULL. */
static void rd_str(rd_t *r, char *buf, size_t len) {
  if (buf != NULL)
    buf[0] = '\0'; /* empty, not stale, whatever happens below */
  uint64_t n = rd_u64(r);
  if (n > MAX_STRING) {
    r->bad = 1;
    return;
  }
  if (buf == NULL) {
    skip(r, n);
    return;
  }
  size_t keep = n < len ? (size_t)n : len - 1;
  rd(r, buf, keep);
  buf[r->bad ? 0 : keep] = '\0';
  skip(r, n - keep);
}

static size_t scalar_size(uint32_t t) {
  static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return t < sizeof(sz) / sizeof(sz[0]) ? sz[t] : 0;
}

/* Skip a value of type t; returns its integer value when it is one. */
static uint64_t rd_value(rd_t *r, uint32_t t, int depth) {
  if (t == T_STR) {
    rd_str(r, NULL, 0);
    return 0;
  }
  if (t == T_ARR) {
    uint32_t et = rd_u32(r);
    uint64_t n = rd_u64(r);
    if (n > MAX_COUNT || depth >= MAX_DEPTH) {
      r->bad = 1;
      return 0;
    }
    size_t es = scalar_size(et);
    if (es)
      skip(r, n * es);
    else if (et == T_STR || et == T_ARR)
      for (uint64_t i = 0; i < n && !r->bad; i++)
        rd_value(r, et, depth + 1);
    else
      r->bad = 1;
    return 0;
  }
  size_t es = scalar_size(t);
  if (es == 0) {
    r->bad = 1;
    return 0;
  }
  uint64_t v = 0;
  rd(r, &v, es);
  return (t == T_F32 || t == T_F64) ? 0 : v;
}

int hl_gguf_read(const char *path, hl_gguf_t *info) {
  memset(info, 0, sizeof(*info));
  FILE *f;
  int rc = hl__os_fopen_regular(path, &f); /* a FIFO must not hang us */
  if (rc < 0)
    return rc;
  rd_t r = {f, 0};
  char magic[4];
  rc = HL_EFORMAT;
  if (!rd(&r, magic, 4) || memcmp(magic, "GGUF", 4) != 0)
    goto out;
  info->version = rd_u32(&r);
  if (info->version < 2 || info->version > 3)
    goto out;
  info->n_tensors = rd_u64(&r);
  info->n_kv = rd_u64(&r);
  if (r.bad || info->n_tensors > MAX_COUNT || info->n_kv > MAX_COUNT)
    goto out;

  uint64_t alignment = 32;
  char key[256];
  /* "<arch>.<suffix>" keys, kept with their prefix: the architecture key may
   * come after them, so they are matched once all keys are read. */
  static const char *const suffixes[] = {
      ".context_length",           ".block_count",
      ".embedding_length",         ".attention.head_count",
      ".attention.head_count_kv",  ".attention.key_length",
      ".attention.value_length"};
  enum { NSUF = sizeof(suffixes) / sizeof(suffixes[0]) };
  struct { int k; char prefix[64]; uint64_t v; } seen[32];
  int nseen = 0;
  for (uint64_t i = 0; i < info->n_kv && !r.bad; i++) {
    rd_str(&r, key, sizeof(key));
    uint32_t t = rd_u32(&r);
    if (r.bad)
      break; /* a key too long or cut short: nothing below may read it */
    if (t == T_STR && strcmp(key, "general.architecture") == 0) {
      rd_str(&r, info->architecture, sizeof(info->architecture));
    } else if (t == T_STR && strcmp(key, "general.name") == 0) {
      rd_str(&r, info->name, sizeof(info->name));
    } else {
      uint64_t v = rd_value(&r, t, 0);
      if (strcmp(key, "general.alignment") == 0 && v > 0 && v <= 65536)
        alignment = v;
      else if (t != T_ARR && t != T_STR && nseen < 32)
        for (int k = 0; k < NSUF; k++) {
          size_t kl = strlen(key), sl = strlen(suffixes[k]);
          if (kl > sl && kl - sl < sizeof(seen[0].prefix) &&
              strcmp(key + kl - sl, suffixes[k]) == 0) {
            seen[nseen].k = k;
            memcpy(seen[nseen].prefix, key, kl - sl);
            seen[nseen].prefix[kl - sl] = '\0';
            seen[nseen++].v = v;
            break;
          }
        }
    }
  }
  uint64_t *out[NSUF] = {&info->context_length, &info->block_count, &info->embedding_length,
                         &info->head_count,     &info->head_count_kv, &info->key_length,
                         &info->value_length};
  for (int j = 0; j < nseen; j++)
    if (info->architecture[0] && strcmp(seen[j].prefix, info->architecture) == 0)
      *out[seen[j].k] = seen[j].v;
  for (uint64_t i = 0; i < info->n_tensors && !r.bad; i++) {
    rd_str(&r, NULL, 0);
    uint32_t nd = rd_u32(&r);
    if (nd > 8) {
      r.bad = 1;
      break;
    }
    skip(&r, 8ull * nd + 4 + 8);
  }
  if (r.bad)
    goto out;
  int64_t here = hl__ftell(f);
  if (here < 0 || hl__fseek(f, 0, SEEK_END) != 0)
    goto out;
  int64_t end = hl__ftell(f);
  uint64_t data = ((uint64_t)here + alignment - 1) / alignment * alignment;
  if (end < 0 || (uint64_t)end < data)
    goto out;
  info->file_size = (uint64_t)end;
  info->tensor_bytes = (uint64_t)end - data;
  rc = 0;
out:
  fclose(f);
  return rc;
}

int hl_gguf_estimate(const char *path, uint64_t n_ctx, hl_gguf_estimate_t *est) {
  memset(est, 0, sizeof(*est));
  hl_gguf_t g;
  int rc = hl_gguf_read(path, &g);
  if (rc < 0)
    return rc;
  est->weights = g.tensor_bytes;
  est->context_length = n_ctx ? n_ctx : g.context_length;
  est->block_count = g.block_count;
  est->head_count = g.head_count;
  est->head_count_kv = g.head_count_kv ? g.head_count_kv : g.head_count;
  est->embedding_length = g.embedding_length;
  uint64_t head_dim = g.head_count ? g.embedding_length / g.head_count : 0;
  uint64_t k_len = g.key_length ? g.key_length : head_dim;
  uint64_t v_len = g.value_length ? g.value_length : head_dim;
  /* f16 K and V per layer, per token, per KV head.  Bounded inputs (each
   * below 2^32 in real models); refuse products that would overflow. */
  long double kv = (long double)est->block_count * (long double)est->context_length *
                   (long double)est->head_count_kv * (long double)(k_len + v_len) * 2.0L;
  if (kv > 1e18L)
    return HL_EFORMAT;
  est->kv_cache = (uint64_t)kv;
  est->overhead = (64ull << 20) + est->weights / 20;
  est->total = est->weights + est->kv_cache + est->overhead;
  return 0;
}

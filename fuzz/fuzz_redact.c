/*
 * fuzz_redact.c - libFuzzer harness for the one redaction (hl_redact).
 * The first byte picks the output buffer's size (0-254, or 255: ample);
 * the rest is the text.  Properties: the output is always NUL-terminated
 * inside the buffer; with an ample buffer it is at most 2n + 4 bytes,
 * unchanged for text with neither "://" nor "password=", and a password
 * planted after the text in a URL's user info and in a password= parameter
 * never comes out.  Redacting twice is not required to give the same text:
 * on free text a masked password= value may take a '/' with it, and the
 * second pass then reads a longer URL user info and masks more (never
 * less); the fuzzer found such inputs, and making the two passes agree
 * would mean leaving the part of a value after a '/' unmasked.
 */
#define _GNU_SOURCE
#include "heavylock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "Zq7Kx9Wv"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  size_t n = size - 1;
  char *text = malloc(n + 64);
  memcpy(text, data + 1, n);
  text[n] = '\0';
  n = strlen(text);
  size_t len = data[0] == 255 ? 2 * n + 4 : data[0];
  char *out = malloc(len + 1);
  memset(out, 'X', len + 1);
  hl_redact(text, out, len);
  if (len > 0 && memchr(out, 0, len) == NULL)
    abort();
  if (out[len] != 'X') /* wrote past the buffer */
    abort();
  if (data[0] == 255) {
    if (!strstr(text, "://") && !strcasestr(text, "password=") && strcmp(out, text) != 0)
      abort();
    if (!strstr(text, SECRET) && !strchr(text, '\'')) {
      /* planted after a blank: a URL with a password, then a parameter */
      size_t big = 2 * (n + 64) + 4;
      char *planted = malloc(n + 64), *o = malloc(big);
      snprintf(planted, n + 64, "%s postgresql://u:" SECRET "@h/d?password=" SECRET, text);
      hl_redact(planted, o, big);
      if (strstr(o, SECRET))
        abort();
      free(planted);
      free(o);
    }
  }
  free(out);
  free(text);
  return 0;
}

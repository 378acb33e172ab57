/*
 * utf8.c - make text from outside (records, command lines, labels) safe to
 * show on a terminal and to decode strictly (Python's str, JSON).
 */
#include "os.h"

#include <string.h>

/* Length of the valid UTF-8 sequence at s (1-4), 0 when it is not valid,
 * -1 when it is a valid start cut short by the end of the string. */
static int seq_len(const unsigned char *s) {
  unsigned char c = s[0];
  int n;
  unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0)
      lo = 0xa0;
    else if (c == 0xed)
      hi = 0x9f; /* no UTF-16 surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0)
      lo = 0x90;
    else if (c == 0xf4)
      hi = 0x8f;
  } else
    return 0;
  for (int i = 1; i < n; i++) {
    if (s[i] == '\0')
      return -1;
    if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xbf))
      return 0;
  }
  return n;
}

void hl__utf8_clean(char *str, char ctl) {
  unsigned char *s = (unsigned char *)str;
  while (*s) {
    int n = seq_len(s);
    if (n < 0) { /* cut inside a character (a bounded copy): drop it */
      *s = '\0';
      return;
    }
    if (n == 0) {
      *s++ = '?';
      continue;
    }
    /* C0 controls, DEL, and the C1 controls (U+0080-U+009F: 0x9b is CSI to
     * many terminals) never pass. */
    if (s[0] < 0x20 || s[0] == 0x7f || (n == 2 && s[0] == 0xc2 && s[1] < 0xa0))
      memset(s, ctl, (size_t)n);
    s += n;
  }
}

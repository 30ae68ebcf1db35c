/* libsrtp2 peer for codec's SRTP interop test.
 * usage: srtp_tool protect|unprotect rtp|rtcp 80|32|gcm HEXKEYSALT (60 hex digits; 56 for gcm)
 * stdin/stdout: packets framed by a 2-byte big-endian length. Exit 1 on any error. */
#include <srtp2/srtp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_exact(unsigned char *b, size_t n) { return fread(b, 1, n, stdin) == n; }

int main(int argc, char **argv) {
  if (argc != 5 || (strlen(argv[4]) != 60 && strlen(argv[4]) != 56)) return 2;
  int protect = strcmp(argv[1], "protect") == 0, rtcp = strcmp(argv[2], "rtcp") == 0;
  unsigned char key[30];
  int klen = (int)strlen(argv[4]) / 2;
  for (int i = 0; i < klen; i++) sscanf(argv[4] + 2 * i, "%2hhx", &key[i]);
  if (srtp_init() != srtp_err_status_ok) return 1;
  srtp_policy_t p;
  memset(&p, 0, sizeof p);
  if (strcmp(argv[3], "gcm") == 0) {
    srtp_crypto_policy_set_aes_gcm_128_16_auth(&p.rtp);
    srtp_crypto_policy_set_aes_gcm_128_16_auth(&p.rtcp);
  } else {
    if (strcmp(argv[3], "32") == 0) srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&p.rtp);
    else srtp_crypto_policy_set_rtp_default(&p.rtp);
    srtp_crypto_policy_set_rtcp_default(&p.rtcp);
  }
  p.ssrc.type = protect ? ssrc_any_outbound : ssrc_any_inbound;
  p.key = key;
  p.window_size = 128;
  srtp_t s;
  if (srtp_create(&s, &p) != srtp_err_status_ok) return 1;
  unsigned char len_b[2], buf[2048];
  while (read_exact(len_b, 2)) {
    int len = (len_b[0] << 8) | len_b[1];
    if (len > 1500 || !read_exact(buf, len)) return 1;
    srtp_err_status_t st = protect ? (rtcp ? srtp_protect_rtcp(s, buf, &len) : srtp_protect(s, buf, &len))
                                   : (rtcp ? srtp_unprotect_rtcp(s, buf, &len) : srtp_unprotect(s, buf, &len));
    if (st != srtp_err_status_ok) { fprintf(stderr, "libsrtp error %d\n", st); return 1; }
    unsigned char out_len[2] = {(unsigned char)(len >> 8), (unsigned char)len};
    fwrite(out_len, 1, 2, stdout);
    fwrite(buf, 1, len, stdout);
  }
  srtp_dealloc(s);
  return 0;
}

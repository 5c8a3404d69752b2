/* io-internal: writing JSON strings (the safetensors header, the metrics log). */
#ifndef ONELORA_IO_JSON_H
#define ONELORA_IO_JSON_H

/* s as a JSON string: in quotes, with quotes, backslashes and control bytes escaped. Free it
 * with ol_free. */
char *ol_json_quote(const char *s);

#endif

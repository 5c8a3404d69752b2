# Run as `cmake -DMSG=... -P fail.cmake` (tests/CMakeLists.txt, onelora_add_script_test): the
# stand-in for a test whose tools are missing. It FAILS, loudly, naming what is missing: a missing
# package is not a reason to skip.
message(FATAL_ERROR "${MSG}")

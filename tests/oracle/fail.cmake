# Run as `cmake -DMSG=... -P fail.cmake`: a registered test that cannot run must FAIL, loudly, not skip.
message(FATAL_ERROR "${MSG}")

# The module layering is enforced by the build (CMakeLists.txt, onelora_module): each module
# compiles against a view folder holding only the headers of the modules it may use. This script
# proves the view works both ways, for one module:
#   a probe that includes an allowed module's header compiles, and
#   a probe that includes a forbidden module's header does not.
# Usage: cmake -DCC=<compiler> -DVIEW=<build>/module-views/<module> -DALLOWED=<header>
#              -DFORBIDDEN=<header> -DWORK=<dir> -P layering.cmake
file(MAKE_DIRECTORY ${WORK})
function(probe header expect_ok)
  string(MAKE_C_IDENTIFIER "${header}" id)
  set(src ${WORK}/probe_${id}.c)
  file(WRITE ${src} "#include \"${header}\"\nint probe_${id};\n")
  execute_process(COMMAND ${CC} -std=c11 -fsyntax-only -I${VIEW} ${src}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(expect_ok AND NOT rc EQUAL 0)
    message(FATAL_ERROR "layering: ${header} should compile in ${VIEW} but does not:\n${err}")
  elseif(NOT expect_ok AND rc EQUAL 0)
    message(FATAL_ERROR "layering: ${header} compiles in ${VIEW}, but the module may not use it")
  endif()
  message(STATUS "layering: ${header} in ${VIEW}: ${rc} (expected ${expect_ok})")
endfunction()
probe(${ALLOWED} TRUE)
probe(${FORBIDDEN} FALSE)

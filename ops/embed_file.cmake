# Turns one file into a NUL-terminated C string named SYMBOL, so the binary
# serves it without a file at run time (the OpenAPI document).
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
file(WRITE "${OUT}.tmp" "/* generated from ${IN}: do not edit */\nconst char ${SYMBOL}[] = {${hex}0x00};\n")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")

/* placeholder: being written */
#include "onelora/peft.h"
const ol_adapter_ops ol_dora_ops = {.name = "dora"};

/* placeholder: being written */
#include "onelora/peft.h"
const ol_adapter_ops ol_lora_ops = {.name = "lora"};

/* placeholder: being written */
#include "onelora/peft.h"
const ol_adapter_ops ol_mora_ops = {.name = "mora"};
const ol_adapter_ops ol_mora6_ops = {.name = "mora6"};

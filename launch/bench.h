// `llava-pipe bench CONFIG --image PATH`: the pipeline's figures through the real
// coordinator and workers (time to first token, decode tokens/s at several batch sizes,
// images/s, embedding handoff, load time and peak memory per stage and per device), as a
// table on stdout and as JSON.
#pragma once

#include "launch/commands.h"

namespace llava {

Command add_bench(CLI::App& app);

}  // namespace llava

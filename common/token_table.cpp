// The token table on the wire (LanguageTask.tokenBytes / tokenEnds).
#include "common/token_table.h"

#include "common/errors.h"

namespace llava {

void to_wire(const TokenTable& table, schema::LanguageTask::Builder task) {
  task.setTokenBytes(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(table.bytes.data()),
                                         table.bytes.size()));
  auto ends = task.initTokenEnds(static_cast<unsigned>(table.ends.size()));
  for (size_t i = 0; i < table.ends.size(); ++i) ends.set(static_cast<unsigned>(i), table.ends[i]);
}

TokenTable token_table_from_wire(schema::LanguageTask::Reader task) {
  TokenTable table;
  const auto bytes = task.getTokenBytes();
  table.bytes.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  for (uint32_t end : task.getTokenEnds()) table.ends.push_back(end);
  if (!table.consistent()) {
    throw RequestError("the task's token table does not hold together (" +
                       std::to_string(table.ends.size()) + " tokens, " +
                       std::to_string(table.bytes.size()) + " bytes)");
  }
  return table;
}

}  // namespace llava

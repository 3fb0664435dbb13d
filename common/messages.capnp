# Every message between the coordinator and the workers. A ZeroMQ message is
# [routing id] [Header] [tensor frame 0] [tensor frame 1] ...; the header describes each
# frame (dtype, shape, byte length) and the receiver checks them before reading any.
@0xb372b175b23d38a6;
using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("llava::schema");

const protocolVersion :UInt32 = 1;

enum DType { f32 @0; f16 @1; bf16 @2; i32 @3; i64 @4; u8 @5; }

struct TensorInfo {
  dtype @0 :DType;
  shape @1 :List(Int64);
  byteLength @2 :UInt64;
  # The payload is not in the message: it lies in the shared-memory file the header names
  # (Header.sharedMemory), at this offset; the message's frame is empty (common/shared_memory.h).
  inSharedMemory @3 :Bool;
  sharedOffset @4 :UInt64;
}

enum Stage { vision @0; language @1; coordinator @2; }
enum WorkerState { starting @0; ready @1; leased @2; releasing @3; }
enum ReleaseHow { exit @0; unload @1; offload @2; }
enum FinishReason { eos @0; length @1; stop @2; cancelled @3; }

# worker -> coordinator, once after connecting.
struct Hello {
  stage @0 :Stage;
  device @1 :Text;
  pid @2 :UInt32;
  replica @3 :UInt32;
  # A worker the coordinator started presents the secret it was given (in its environment,
  # which other users cannot read); the coordinator accepts a local worker's hello only
  # with it. Empty for workers of a cluster manager (CURVE keys guard those).
  secret @4 :Data;
  # Random, fixed for the worker process's life: a hello from another incarnation for a
  # replica whose worker is alive is refused (two live workers never share a replica).
  incarnation @5 :UInt64;
  # Which shared memory this worker sees (the host's boot id and /dev/shm's device and
  # inode; empty: none): a worker that sees the coordinator's takes embeddings through it.
  sharedMemoryId @6 :Text;
}

# both ways, every heartbeat interval.
struct Heartbeat {
  state @0 :WorkerState;
  deviceBytes @1 :UInt64;       # now reserved on the device (the allocator's pool)
  peakDeviceBytes @2 :UInt64;   # since the lease began
  loadSeconds @3 :Float64;      # loading weights, all leases so far
  workSeconds @4 :Float64;      # encoding or generating, all leases so far
  kvSlotsUsed @5 :UInt32;       # language: sequences holding a KV-cache slot
  kvSlots @6 :UInt32;           # language: KV-cache slots (0 before the lease)
  allocatedBytes @7 :UInt64;    # now allocated to tensors (within deviceBytes)
}

# coordinator -> worker: the worker may now place memory on `device`.
struct LeaseGrant {
  device @0 :Text;
  memoryLimit @1 :UInt64;       # bytes; 0 = no limit
  epoch @2 :UInt64;
}

# coordinator -> worker: give the device back.
struct LeaseRelease {
  how @0 :ReleaseHow;
  epoch @1 :UInt64;
}

# worker -> coordinator: the device is free (sent just before exit for `exit`).
struct LeaseReleased {
  epoch @0 :UInt64;
  peakDeviceBytes @1 :UInt64;
  loadSeconds @2 :Float64;
  workSeconds @3 :Float64;
}

# coordinator -> vision worker; frames: one u8 [bytes] frame per image (encoded file bytes).
struct VisionTask {
  imageCount @0 :UInt32;
  # Tasks the coordinator sends this worker right after this one, in the same scheduling
  # pass: the worker waits for them before encoding, so that a burst is one batch.
  followedBy @1 :UInt32;
  # Where the worker may write this task's embeddings instead of sending them: a range of
  # the shared-memory file Header.sharedMemory names (sharedBytes 0: none offered).
  sharedOffset @2 :UInt64;
  sharedBytes @3 :UInt64;
}

# vision worker -> coordinator; frames: one [image_tokens, hidden] frame per image.
struct Embeddings {
  imageCount @0 :UInt32;
  encodeSeconds @1 :Float64;
  batchImages @2 :UInt32;  # images in the batch these were encoded in
  preprocessSeconds @3 :Float64;  # decoding and preprocessing that batch (within encodeSeconds)
  waitSeconds @4 :Float64;  # from the task's arrival at the worker to its batch's start
}

struct Sampling {
  maxNewTokens @0 :UInt32;
  temperature @1 :Float32;
  topK @2 :UInt32;
  topP @3 :Float32;
  repetitionPenalty @4 :Float32;
  seed @5 :UInt64;
  stopTokenIds @6 :List(Int32);
  minP @7 :Float32;             # 0 = off
  # -1: none; else each token comes with its log-probability under the model and the
  # `logprobs` most likely tokens at its place with theirs (TokenChunk.logprobs).
  logprobs @8 :Int32 = -1;
  # With logprobs: each prompt token's too, from the second on (TokenChunk.promptLogprobs).
  promptLogprobs @9 :Bool;
  # OpenAI's, on the answer's tokens (a resumed task's last resumeFrom ids are the answer's):
  # score - presencePenalty (once there) - frequencyPenalty x its count. 0 = off.
  presencePenalty @10 :Float32;
  frequencyPenalty @11 :Float32;
  # OpenAI's logit_bias: added to each id's score before anything else; -100 to 100.
  logitBias @12 :List(LogitBias);
  # The API's response_format json_object: the answer is one JSON object; the task carries
  # every token's bytes (LanguageTask.tokenBytes) for the worker to constrain it.
  jsonObject @13 :Bool;
  # With jsonObject: the schema the object follows, compact JSON (response_format
  # json_schema; common/json_schema.h); empty: any object.
  jsonSchema @14 :Text;
  # vLLM's min_tokens: the stop ids are out of the draw before this many answer tokens.
  minTokens @15 :UInt32;
}

struct LogitBias {
  id @0 :Int32;
  bias @1 :Float32;
}

# coordinator -> language worker; frames: one [image_tokens, hidden] embedding frame per
# run of image tokens in tokenIds, in order.
struct LanguageTask {
  tokenIds @0 :List(Int32);
  sampling @1 :Sampling;
  # tokens generated by an earlier attempt; they continue the prompt, and the first
  # new token is number `resumeFrom` of the answer.
  resumeFrom @2 :UInt32;
  # With sampling.jsonObject: the bytes each token id adds to a text (none for special
  # tokens), one after another; token i's end at tokenEnds[i] (common/token_table.h).
  tokenBytes @3 :Data;
  tokenEnds @4 :List(UInt32);
  # Names the images' contents (0: none): tasks with equal prompts and keys have the same
  # prompt rows, so a worker runs a prompt once for them (another choice of the same
  # request copies the first's keys and values).
  imageKey @5 :UInt64;
}

# A generated token's log-probability: the log-softmax of the model's scores at its place
# (before the repetition penalty, temperature and the top-k/top-p/min-p cuts), and those of
# the most likely tokens there, best first.
struct TokenLogprobs {
  logprob @0 :Float32;
  topIds @1 :List(Int32);
  topLogprobs @2 :List(Float32);
}

# language worker -> coordinator, as tokens are generated.
struct TokenChunk {
  tokenIds @0 :List(Int32);
  firstIndex @1 :UInt32;        # index of tokenIds[0] in the answer
  logprobs @2 :List(TokenLogprobs);  # one per token when the task asked (Sampling.logprobs)
  # In the task's first chunk, when it asked (Sampling.promptLogprobs): one per prompt token
  # from the second on, each under the scores after the tokens before it.
  promptLogprobs @3 :List(TokenLogprobs);
}

struct Done {
  reason @0 :FinishReason;
  promptTokens @1 :UInt32;
  generatedTokens @2 :UInt32;
  prefillSeconds @3 :Float64;
  decodeSeconds @4 :Float64;
}

struct Failure {
  stage @0 :Stage;
  message @1 :Text;
  retryable @2 :Bool;           # true: the worker failed, not the request
  badRequest @3 :Bool;          # true: the request itself is at fault (an undecodable image)
  sharedMemory @4 :Bool;        # true: the worker cannot read the shared memory it was sent
}

struct Shutdown {
  reason @0 :Text;
}

struct Cancel {}

# coordinator -> worker: a message came from a connection it does not know (the worker was
# declared dead after a stall, or this is a new coordinator): drop the work, register again.
struct NotRegistered {}

# coordinator -> worker: this hello is not accepted (no or a wrong secret, or the replica's
# worker is alive). The worker says why and may try again later.
struct Refused {
  reason @0 :Text;
}

struct Header {
  protocolVersion @0 :UInt32;
  requestId @1 :UInt64;
  attempt @2 :UInt32;            # stale replies of an earlier attempt are dropped
  tensors @3 :List(TensorInfo);
  sharedMemory @19 :Text;        # the file of this message's frames inSharedMemory
  body :union {
    hello @4 :Hello;
    heartbeat @5 :Heartbeat;
    leaseGrant @6 :LeaseGrant;
    leaseRelease @7 :LeaseRelease;
    leaseReleased @8 :LeaseReleased;
    visionTask @9 :VisionTask;
    embeddings @10 :Embeddings;
    languageTask @11 :LanguageTask;
    tokenChunk @12 :TokenChunk;
    done @13 :Done;
    failure @14 :Failure;
    shutdown @15 :Shutdown;
    cancel @16 :Cancel;
    notRegistered @17 :NotRegistered;
    refused @18 :Refused;
  }
}

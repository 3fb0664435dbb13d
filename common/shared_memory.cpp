// Files in /dev/shm: created, opened, mapped, viewed as messages, cleaned up; their ranges.
#include "common/shared_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

namespace llava {
namespace {

constexpr const char* kDir = "/dev/shm";
// Then <creator pid>-<its pid namespace>-<counter>-<random>: a pid means something only in
// its namespace (containers may share a /dev/shm and not their pids).
constexpr const char* kPrefix = "llava-pipe-";

uint64_t pid_namespace() {
  struct stat ns {};
  return ::stat("/proc/self/ns/pid", &ns) == 0 ? static_cast<uint64_t>(ns.st_ino) : 0;
}

std::string error_text(int error) {
  return std::strerror(error);
}

// Whether `name` (in kDir) is one of ours: kPrefix, then digits, '-', and hex/digits only.
bool our_name(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0 || name.size() == std::strlen(kPrefix)) return false;
  for (size_t i = std::strlen(kPrefix); i < name.size(); ++i) {
    const char c = name[i];
    if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == '-')) return false;
  }
  return true;
}

// The pid a name of ours was created by, if it was created in our pid namespace; else -1.
pid_t creator_of(const std::string& name) {
  const size_t start = std::strlen(kPrefix);
  const size_t end = name.find('-', start);
  if (end == std::string::npos || end == start) return -1;
  const size_t ns_end = name.find('-', end + 1);
  if (ns_end == std::string::npos) return -1;
  try {
    if (std::stoull(name.substr(end + 1, ns_end - end - 1)) != pid_namespace()) return -1;
    return static_cast<pid_t>(std::stol(name.substr(start, end - start)));
  } catch (const std::exception&) {
    return -1;
  }
}

struct ViewHint {
  std::shared_ptr<SharedMemory> memory;
  std::shared_ptr<void> hold;
};

}  // namespace

std::string shared_memory_id() {
  struct stat dir {};
  if (::stat(kDir, &dir) != 0 || !S_ISDIR(dir.st_mode)) return "";
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string boot_id;
  std::getline(boot, boot_id);
  return boot_id + ":" + std::to_string(dir.st_dev) + ":" + std::to_string(dir.st_ino);
}

std::shared_ptr<SharedMemory> SharedMemory::create(uint64_t bytes) {
  static std::atomic<uint64_t> counter{0};
  std::random_device random;
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, "%d-%llu-%llu-%08x", static_cast<int>(getpid()),
                static_cast<unsigned long long>(pid_namespace()),
                static_cast<unsigned long long>(counter++), random());
  std::shared_ptr<SharedMemory> memory(new SharedMemory());
  memory->path_ = std::string(kDir) + "/" + kPrefix + suffix;
  const int fd = ::open(memory->path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw std::runtime_error("cannot create " + memory->path_ + ": " + error_text(errno));
  }
  memory->owner_ = true;  // removed by the destructor from here on
  // Reserve every page now: on a tmpfs that fills up, a write to a page not yet there
  // would be a SIGBUS in whichever process wrote it.
  const int reserved = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
  if (reserved != 0) {
    ::close(fd);
    throw std::runtime_error("cannot reserve " + std::to_string(bytes >> 20) + " MiB in " + kDir +
                             ": " + error_text(reserved));
  }
  void* data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int mapped = errno;
  ::close(fd);
  if (data == MAP_FAILED) {
    throw std::runtime_error("cannot map " + memory->path_ + ": " + error_text(mapped));
  }
  memory->data_ = static_cast<char*>(data);
  memory->size_ = bytes;
  return memory;
}

std::shared_ptr<SharedMemory> SharedMemory::open(const std::string& path) {
  const std::string dir = std::string(kDir) + "/";
  if (path.rfind(dir, 0) != 0 || !our_name(path.substr(dir.size()))) {
    throw std::runtime_error("'" + path + "' is not a shared-memory file of llava-pipe");
  }
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + error_text(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || info.st_uid != ::geteuid() ||
      info.st_size <= 0) {
    ::close(fd);
    throw std::runtime_error(path + " is not a regular file of this user");
  }
  std::shared_ptr<SharedMemory> memory(new SharedMemory());
  memory->path_ = path;
  void* data =
      ::mmap(nullptr, static_cast<size_t>(info.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int mapped = errno;
  ::close(fd);
  if (data == MAP_FAILED)
    throw std::runtime_error("cannot map " + path + ": " + error_text(mapped));
  memory->data_ = static_cast<char*>(data);
  memory->size_ = static_cast<uint64_t>(info.st_size);
  return memory;
}

SharedMemory::~SharedMemory() {
  if (before_unmap_) before_unmap_(*this);
  if (data_) ::munmap(data_, size_);
  if (owner_) ::unlink(path_.c_str());
}

zmq::message_t SharedMemory::view(const std::shared_ptr<SharedMemory>& memory, uint64_t offset,
                                  uint64_t bytes, std::shared_ptr<void> hold) {
  if (offset > memory->size_ || bytes > memory->size_ - offset) {
    throw std::out_of_range("range [" + std::to_string(offset) + ", +" + std::to_string(bytes) +
                            ") is outside " + memory->path_ + " (" + std::to_string(memory->size_) +
                            " bytes)");
  }
  auto* hint = new ViewHint{memory, std::move(hold)};
  return zmq::message_t(
      memory->data_ + offset, bytes, [](void*, void* h) { delete static_cast<ViewHint*>(h); },
      hint);
}

void remove_stale_shared_memory() {
  DIR* dir = ::opendir(kDir);
  if (!dir) return;
  while (dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (!our_name(name)) continue;
    const pid_t pid = creator_of(name);  // -1: another namespace's, or not ours to judge
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
      ::unlink((std::string(kDir) + "/" + name).c_str());  // another user's stays (EPERM)
    }
  }
  ::closedir(dir);
}

std::shared_ptr<SharedMemory> SharedMemoryMaps::get(const std::string& path) {
  for (auto it = recent_.begin(); it != recent_.end(); ++it) {
    if ((*it)->path() != path) continue;
    recent_.splice(recent_.begin(), recent_, it);
    return recent_.front();
  }
  recent_.push_front(SharedMemory::open(path));
  if (on_map_) on_map_(*recent_.front());
  if (recent_.size() > kKept) recent_.pop_back();
  return recent_.front();
}

zmq::message_t SharedMemoryMaps::view(const std::string& path, uint64_t offset, uint64_t bytes,
                                      uint64_t request, uint32_t attempt) {
  try {
    return SharedMemory::view(get(path), offset, bytes);
  } catch (const std::exception& e) {
    throw SharedMemoryError(std::string("shared memory: ") + e.what(), request, attempt);
  }
}

SharedRanges::SharedRanges(uint64_t size) {
  const uint64_t usable = size / kAlign * kAlign;
  if (usable > 0) free_[0] = usable;
  free_bytes_ = usable;
}

std::optional<uint64_t> SharedRanges::take(uint64_t bytes) {
  if (bytes == 0) return std::nullopt;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes) continue;
    const uint64_t offset = it->first, left = it->second - bytes;
    free_.erase(it);
    if (left > 0) free_[offset + bytes] = left;
    free_bytes_ -= bytes;
    return offset;
  }
  return std::nullopt;
}

void SharedRanges::give(uint64_t offset, uint64_t bytes) {
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  std::lock_guard<std::mutex> lock(mutex_);
  free_bytes_ += bytes;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first == offset + bytes) {  // merge with the one after
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // and with the one before
    auto before = std::prev(next);
    if (before->first + before->second == offset) {
      before->second += bytes;
      return;
    }
  }
  free_[offset] = bytes;
}

uint64_t SharedRanges::free_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return free_bytes_;
}

}  // namespace llava

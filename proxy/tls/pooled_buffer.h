#pragma once
// Record-sized buffers from a per-thread free list: what a TLS stream reads
// into (held only while its bytes are untaken) and what a copy loop moves
// one read through (IoBuffer). A worker keeps a few spare ones instead of a
// malloc and free per read.

#include <cstddef>
#include <vector>

namespace gatehouse::proxy {

// One buffer, taken from the thread's free list at the first get() and
// handed back at release() or destruction.
class PooledBuffer {
 public:
  static constexpr std::size_t size = 17 * 1024;  // a full TLS record and then some

  PooledBuffer() = default;
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() { release(); }

  char* get() {
    if (data_ == nullptr) data_ = acquire();
    return data_;
  }
  void release() {
    if (data_ == nullptr) return;
    auto& free = free_list().buffers;
    if (free.size() < kMaxFree) free.push_back(data_);
    else delete[] data_;
    data_ = nullptr;
  }

 private:
  // Freed with the thread, so nothing is left behind when a worker ends.
  struct FreeList {
    std::vector<char*> buffers;
    ~FreeList() {
      for (char* b : buffers) delete[] b;
    }
  };
  static constexpr std::size_t kMaxFree = 64;
  static FreeList& free_list() {
    thread_local FreeList list;
    return list;
  }
  static char* acquire() {
    auto& free = free_list().buffers;
    if (free.empty()) return new char[size];
    char* b = free.back();
    free.pop_back();
    return b;
  }

  char* data_ = nullptr;
};

}  // namespace gatehouse::proxy

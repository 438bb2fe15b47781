// sha256.cpp: SHA-256 as FIPS 180-4 section 6.2 writes it, one 64-byte block at a time.
#include "sha256.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "errors.h"

namespace bodyrt {
namespace {

const uint32_t ROUND_CONSTANTS[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotate_right(uint32_t value, int bits) { return (value >> bits) | (value << (32 - bits)); }

class Sha256 {
public:
    void update(const uint8_t* data, size_t size)
    {
        total_bytes_ += size;
        while (size > 0) {
            size_t take = std::min(size, sizeof block_ - filled_);
            std::memcpy(block_ + filled_, data, take);
            filled_ += take;
            data += take;
            size -= take;
            if (filled_ == sizeof block_) {
                compress(block_);
                filled_ = 0;
            }
        }
    }

    std::string hex_digest()
    {
        uint64_t bit_length = total_bytes_ * 8;
        uint8_t padding[72] = {0x80};
        size_t pad = (filled_ < 56 ? 56 : 120) - filled_;
        update(padding, pad);
        uint8_t length_bytes[8];
        for (int i = 0; i < 8; ++i) length_bytes[i] = uint8_t(bit_length >> (56 - 8 * i));
        update(length_bytes, 8);
        static const char digits[] = "0123456789abcdef";
        std::string hex;
        for (uint32_t word : state_)
            for (int shift = 28; shift >= 0; shift -= 4) hex += digits[(word >> shift) & 0xf];
        return hex;
    }

private:
    void compress(const uint8_t* block)
    {
        uint32_t schedule[64];
        for (int t = 0; t < 16; ++t)
            schedule[t] = uint32_t(block[4 * t]) << 24 | uint32_t(block[4 * t + 1]) << 16 |
                          uint32_t(block[4 * t + 2]) << 8 | uint32_t(block[4 * t + 3]);
        for (int t = 16; t < 64; ++t) {
            uint32_t s0 = rotate_right(schedule[t - 15], 7) ^ rotate_right(schedule[t - 15], 18) ^ (schedule[t - 15] >> 3);
            uint32_t s1 = rotate_right(schedule[t - 2], 17) ^ rotate_right(schedule[t - 2], 19) ^ (schedule[t - 2] >> 10);
            schedule[t] = schedule[t - 16] + s0 + schedule[t - 7] + s1;
        }
        uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
        uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
        for (int t = 0; t < 64; ++t) {
            uint32_t sum1 = rotate_right(e, 6) ^ rotate_right(e, 11) ^ rotate_right(e, 25);
            uint32_t choose = (e & f) ^ (~e & g);
            uint32_t temp1 = h + sum1 + choose + ROUND_CONSTANTS[t] + schedule[t];
            uint32_t sum0 = rotate_right(a, 2) ^ rotate_right(a, 13) ^ rotate_right(a, 22);
            uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
            uint32_t temp2 = sum0 + majority;
            h = g; g = f; f = e; e = d + temp1;
            d = c; c = b; b = a; a = temp1 + temp2;
        }
        state_[0] += a; state_[1] += b; state_[2] += c; state_[3] += d;
        state_[4] += e; state_[5] += f; state_[6] += g; state_[7] += h;
    }

    uint32_t state_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                          0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t block_[64];
    size_t filled_ = 0;
    uint64_t total_bytes_ = 0;
};

}  // namespace

std::string sha256_of_bytes(const void* data, size_t size)
{
    Sha256 hash;
    hash.update(static_cast<const uint8_t*>(data), size);
    return hash.hex_digest();
}

std::string sha256_of_file(const std::string& path)
{
    std::FILE* stream = std::fopen(path.c_str(), "rb");
    if (stream == nullptr) throw BundleError(path + ": cannot be opened for reading");
    Sha256 hash;
    std::vector<uint8_t> buffer(1 << 20);
    size_t read;
    while ((read = std::fread(buffer.data(), 1, buffer.size(), stream)) > 0)
        hash.update(buffer.data(), read);
    bool failed = std::ferror(stream) != 0;
    std::fclose(stream);
    if (failed) throw BundleError(path + ": read error while hashing");
    return hash.hex_digest();
}

}  // namespace bodyrt

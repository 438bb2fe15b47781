// sha256.h: SHA-256 (FIPS 180-4) of a file, for verifying a bundle's files against its manifest.
#pragma once

#include <string>

namespace bodyrt {

// Lower-case hex digest of the file's bytes; throws BundleError (errors.h) if it cannot be read.
std::string sha256_of_file(const std::string& path);

// Lower-case hex digest of a byte string (for the tests of this file against known digests).
std::string sha256_of_bytes(const void* data, size_t size);

}  // namespace bodyrt

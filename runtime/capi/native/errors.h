// errors.h: the library's exceptions, one per bodyrt_status; the C layer (bodyrt.cpp) turns each
// into its status and its message into the thread's and the pipeline's last error.
#pragma once

#include <stdexcept>
#include <string>

#include "bodyrt.h"

namespace bodyrt {

struct Error : std::runtime_error {
    bodyrt_status status;
    Error(bodyrt_status status, const std::string& message) : std::runtime_error(message), status(status) {}
};

struct InvalidArgument : Error {
    explicit InvalidArgument(const std::string& message) : Error(BODYRT_ERROR_INVALID_ARGUMENT, message) {}
};
struct InvalidHandle : Error {
    explicit InvalidHandle(const std::string& message) : Error(BODYRT_ERROR_INVALID_HANDLE, message) {}
};
struct BufferTooSmall : Error {
    explicit BufferTooSmall(const std::string& message) : Error(BODYRT_ERROR_BUFFER_TOO_SMALL, message) {}
};
struct BundleError : Error {
    explicit BundleError(const std::string& message) : Error(BODYRT_ERROR_BUNDLE, message) {}
};
struct BackendUnavailable : Error {
    explicit BackendUnavailable(const std::string& message) : Error(BODYRT_ERROR_BACKEND_UNAVAILABLE, message) {}
};
struct RuntimeError : Error {
    explicit RuntimeError(const std::string& message) : Error(BODYRT_ERROR_RUNTIME, message) {}
};

}  // namespace bodyrt

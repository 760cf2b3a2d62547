#pragma once
// ocsp = "auto": one loop per such certificate of a generation, on the
// control thread, fetches the OCSP response from the responder named in the
// certificate's Authority Information Access (HTTP POST, RFC 6960 A.1),
// checks it as a response file is checked, and puts it in the
// certificate's staple slot. It refreshes at half the response's validity,
// retries failures with exponential backoff while keeping the last good
// response, and says when that response expires (and so stops being
// stapled) with no newer one to replace it.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

#include "proxy/runtime/generation.h"

namespace gatehouse::proxy {

class OcspFetcher {
 public:
  OcspFetcher(boost::asio::io_context& io, std::shared_ptr<Generation> generation);
  ~OcspFetcher();
  OcspFetcher(const OcspFetcher&) = delete;
  OcspFetcher& operator=(const OcspFetcher&) = delete;

  void stop();  // every loop ends at its next wake-up

  struct State;  // shared with the loops, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

// POSTs a DER OCSP request to an http:// responder URL; the DER response,
// or an error saying what failed.
struct OcspHttpResult {
  std::string body;
  std::string error;  // "" on success (HTTP 200)
};
boost::asio::awaitable<OcspHttpResult> ocsp_http_post(std::string url, std::string request);

}  // namespace gatehouse::proxy

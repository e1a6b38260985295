// /metrics in the Prometheus text format (version 0.0.4): gauges for what runs now, counters
// for totals, a histogram for the time to first token. Names start with tq_.
#pragma once

#include <string>

#include "tq/serve/service.h"

namespace tq::serve {

std::string prometheus_text(const ServiceStats& s);

}  // namespace tq::serve

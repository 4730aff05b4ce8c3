//! Camunda 7 integration (REST client, typed variables, reporter, pull-mode poller). This module
//! is the seam the dispatcher and relay call into; until it is filled, tasks carry the report
//! state `not_applicable` and workers report to Camunda themselves (the seed's flow).

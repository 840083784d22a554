# frozen_string_literal: true

# The contract: everything the public API promises, in one set of shared
# examples that every backend runs (spec/contract_spec.rb, one line each).
# Topics, one file each:
#
#   exclusion     one holder at a time: threads, processes (where the
#                 backend allows), hand-over; distinct ids are independent
#   reentrancy    per thread, blocks and Lock objects, outermost release
#   timeouts      0 / n / nil, default_timeout, TimeoutError's message
#   interrupts    Timeout, Thread#raise, #kill during a wait; an interrupt at
#                 every point of Lock#lock and #try_lock; deferred interrupts
#   exceptions    exceptions, throw, break, next release the lock
#   lost_leases   leases kept while held; a lost one is reported (lost?, the
#                 log, LockLostError, on_lock_lost = :log)
#   bad_input     ArgumentError naming the id, timeout, ttl, option; any id
#   queries       get_current_lock, locked?, holder, owned? agree
#
# Examples tagged :slow (seconds of real time) stay out of `rake spec:fast`.
# What a backend must say about itself is in spec/contract/backends.rb.
require "tmpdir"
require_relative "../support/interrupt_points"
require_relative "helpers"
require_relative "backends"
require_relative "exclusion"
require_relative "reentrancy"
require_relative "timeouts"
require_relative "interrupts"
require_relative "exceptions"
require_relative "lost_leases"
require_relative "bad_input"
require_relative "queries"

RSpec.shared_examples "a MegaMutex backend" do |name|
  chosen = ContractBackend[name]

  describe "backend #{chosen}" do
    include ContractHelpers

    let(:backend) { chosen }

    before do
      backend.before_example
      backend.use
    end

    after do
      kill_contract_children
      backend.after_example
    end

    include_examples "contract: exclusion"
    include_examples "contract: reentrancy"
    include_examples "contract: timeouts"
    include_examples "contract: interrupts"
    include_examples "contract: exceptions"
    include_examples "contract: lost leases"
    include_examples "contract: bad input"
    include_examples "contract: queries"
  end
end

# frozen_string_literal: true

require_relative "../../support/quorum_servers"

# A majority of three memcached servers (-M), shared by the contract's
# examples; started and made old enough to count on first use.
ContractBackend.register(
  :quorum,
  processes: true,
  configure: ->(c) { QuorumServers.configure(c) },
  # As a flush_all or a restart of every server would: the lock is gone
  # from all three.
  lose_lease: lambda { |lock|
    found = QuorumServers.shared.count { |server| server.delete(lock.key) }
    raise "#{lock.key} was on #{found} of 3 servers" if found < 2
  }
)

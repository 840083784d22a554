# frozen_string_literal: true

ContractBackend.register(
  :memory,
  processes: false, # one table per process: the memory backend is no cross-process lock
  configure: ->(c) { c.backend = :memory },
  # The only lock the example holds goes, as after a memcached restart.
  lose_lease: lambda { |lock|
    raise "#{lock.key} was not in the memory table" unless MegaMutex::MemoryStore.locks.key?(lock.key)

    MegaMutex::MemoryStore.reset!
  },
  before: -> { MegaMutex::MemoryStore.reset! },
  after: -> { MegaMutex::MemoryStore.reset! }
)

# frozen_string_literal: true

module MegaMutex
  # The :memory backend's store, loaded on first use (see {Configuration#backend=}).
  autoload :MemoryStore, File.expand_path("../memory_store", __dir__)

  # The :memory backend's settings: it has none of its own (memcache_servers
  # and the network timeouts are ignored); choosing it loads its store. Its
  # leases are kept by the C renewer's lane for the process's table: a Ruby
  # renewer needs the GVL, and a thread hogging it let a waiter in while the
  # holder was inside.
  class Configuration
    store_settings :memory, selected: :load_memory_store, client: :memory_client, c_leases: true

    private

    # @return [Native::Client] a client of this process's memory store
    def memory_client
      MemoryStore.new
    end

    # Loads the store when the backend is chosen, not at the first lock,
    # where a Timeout could cut the load short.
    def load_memory_store
      require_relative "../memory_store"
    end
  end
end

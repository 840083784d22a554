# frozen_string_literal: true

module MegaMutex
  class CLI
    # How `mega_mutex status` words what the store's describe says
    # (Native::Client#_describe: holder, lease left, server).
    # @api private
    module Status
      private

      # @param lease [Float, nil] seconds left; -1.0 never expires; nil unknown
      # @return [String]
      def describe_lease(lease)
        case lease
        when nil then "lease unknown"
        when -1.0 then "no expiry"
        else "lease #{lease.to_i} s left"
        end
      end
    end
  end
end
